"""Talking to teachers and judges: the OpenAI-compatible client, API keys, the local server."""
