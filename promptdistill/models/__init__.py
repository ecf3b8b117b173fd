"""Local models: finding and loading them, the chat renderer, and the generation engine."""
