"""Stage 3: a LoRA adapter trained on the student -> RUN/adapter/."""
