"""Keep secrets out of every message, file and log: URLs without credentials, keys masked."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

_SECRET_QUERY = re.compile(r"(key|token|secret|sig|password|auth)", re.IGNORECASE)
# an Authorization value as an endpoint may echo it back in an error ("Incorrect API key
# provided: Basic dXNlcjpz..."): the scheme stays, the credentials go (issue #16)
_AUTH_VALUE = re.compile(r"\b(Bearer|Basic)(\s+|%20)[A-Za-z0-9._~+/=:-]{6,}", re.IGNORECASE)


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


def url_credentials(url: str) -> bool:
    """True if `url` carries a user name or password (`http://user:key@host/v1`)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "@" in url.split("/")[2] if url.count("/") >= 2 else False
    return parts.username is not None or parts.password is not None


def redact_auth(text: str) -> str:
    """Mask every Authorization value (Bearer, Basic) that appears in `text`."""
    return _AUTH_VALUE.sub(lambda m: f"{m.group(1)} ***", text)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret (an API key, say) in `text`, and every
    Authorization value an endpoint echoed back."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return redact_auth(text)
