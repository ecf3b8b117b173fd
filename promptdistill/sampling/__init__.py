"""Stage 1: the teacher answers user prompts *with* the system prompt -> RUN/samples.jsonl."""
