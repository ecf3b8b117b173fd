"""API keys: only ever from the environment or a key file, and never written anywhere.

A teacher's configuration names the *variable* (`api_key_env`, default OPENAI_API_KEY) or the
*file* (`api_key_file`) that holds its key, never the key itself, so `RUN/config.yaml` can be
shared. The key goes into one HTTP header (clients/endpoint.py) and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

from promptdistill.core.config import TeacherConfig
from promptdistill.core.errors import UserError


def read_api_key(teacher: TeacherConfig) -> str | None:
    """From --api-key-file, else the environment variable (OPENAI_API_KEY by default)."""
    if teacher.api_key_file:
        path = Path(teacher.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UserError(f"--api-key-file {path}: cannot read it ({e.strerror})") from None
        if not key:
            raise UserError(f"--api-key-file {path} is empty; put the API key in it")
        return key
    key = os.environ.get(teacher.api_key_env, "").strip()
    if not key and teacher.api_key_env != "OPENAI_API_KEY":
        raise UserError(
            f"--api-key-env {teacher.api_key_env}: that environment variable is not set or empty"
        )
    return key or None
