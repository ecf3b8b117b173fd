"""API keys: only ever from the environment or a key file, and never written anywhere.

A teacher's configuration names the *variable* (`api_key_env`, default OPENAI_API_KEY) or the
*file* (`api_key_file`) that holds its key, never the key itself, so `RUN/config.yaml` can be
shared. The key goes into one HTTP header (clients/endpoint.py) and nowhere else.

A key must be one line of printable characters: anything else cannot go into a header, and
the HTTP library's own error for it is a traceback (issue #16). A key file that other users can
read gets a warning.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from promptdistill.core.config import TeacherConfig
from promptdistill.core.errors import UserError


def read_api_key(teacher: TeacherConfig, warn: Callable[[str], None] | None = None) -> str | None:
    """From --api-key-file, else the environment variable (OPENAI_API_KEY by default).
    `warn` is told about a key file that other users can read."""
    if teacher.api_key_file:
        path = Path(teacher.api_key_file).expanduser()
        try:
            raw = path.read_bytes()
            mode = path.stat().st_mode
        except OSError as e:
            raise UserError(f"--api-key-file {path}: cannot read it ({e.strerror})") from None
        try:
            key = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise UserError(
                f"--api-key-file {path}: not UTF-8 text (bad byte at offset {e.start}); put "
                "only the API key in it, as plain text"
            ) from None
        if not key:
            raise UserError(f"--api-key-file {path} is empty; put the API key in it")
        _check_key(key, f"--api-key-file {path}")
        if warn is not None and mode & (stat.S_IRGRP | stat.S_IROTH):
            warn(
                f"[yellow]warning:[/] --api-key-file {path} can be read by other users "
                f"(mode {stat.S_IMODE(mode):o}); `chmod 600 {path}` keeps the key yours"
            )
        return key
    key = os.environ.get(teacher.api_key_env, "").strip()
    if not key and teacher.api_key_env != "OPENAI_API_KEY":
        raise UserError(
            f"--api-key-env {teacher.api_key_env}: that environment variable is not set or empty"
        )
    if key:
        _check_key(key, f"${teacher.api_key_env}")
    return key or None


def key_source(teacher: TeacherConfig) -> str:
    """Where the key comes from, as messages name it: the key file, or the variable."""
    if teacher.api_key_file:
        return f"--api-key-file {Path(teacher.api_key_file).expanduser()}"
    return f"${teacher.api_key_env}"


def _check_key(key: str, where: str) -> None:
    """One line of printable characters, or a UserError that never shows the key."""
    if "\n" in key or "\r" in key:
        raise UserError(
            f"{where} holds more than one line; put only the API key in it, on one line"
        )
    if any(not ch.isprintable() or ch.isspace() for ch in key):
        raise UserError(
            f"{where} holds a space or a control character inside the key; put only the API "
            "key in it"
        )
