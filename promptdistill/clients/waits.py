"""What an endpoint says about waiting and about its errors: retry-after headers, error bodies.

Pure functions of headers and bytes, for clients/endpoint.py.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import orjson

MAX_RETRY_AFTER_S = 120.0


def asked_wait(headers: Any) -> str | None:
    """The server's retry-after as it sent it, for messages: `3600 s`, or the HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        return f"{ms} ms"
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return f"{float(value):g} s"
    except ValueError:
        return str(value)[:40]


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `retry-after` (seconds or HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return min(max(float(value) / 1000.0, 0.0), MAX_RETRY_AFTER_S)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER_S)


def error_message(body: bytes) -> str:
    """The server's own error text, short, from an OpenAI-style `{"error": {"message": ...}}`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
    else:
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            text = str(err.get("message") or err.get("detail") or err)
        else:
            text = str(err)
    text = " ".join(text.split())
    return text[:300]
