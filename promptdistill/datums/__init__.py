"""Stage 2: teacher conversations -> examples *without* the system prompt -> RUN/datums/."""
