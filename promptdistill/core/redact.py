"""Keep secrets out of every message, file and log: URLs without credentials, keys masked."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

_SECRET_QUERY = re.compile(r"(key|token|secret|sig|password|auth)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Drop credentials from a URL: user:password@ and key-like query parameters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    query = "&".join(
        q if not _SECRET_QUERY.search(q.split("=", 1)[0]) else q.split("=", 1)[0] + "=REDACTED"
        for q in parts.query.split("&")
        if q
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret (an API key, say) in `text`."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text
