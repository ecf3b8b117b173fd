"""Base URLs of OpenAI-compatible endpoints: what users pass, and where requests go.

Like the OpenAI SDK's `base_url`, it is the prefix *before* `/chat/completions`. A bare host gets
`/v1`, a pasted `/chat/completions` is dropped, a query string (Azure's `?api-version=...`) stays
at the end of every request URL, and credentials in the URL are refused (issue #16).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from promptdistill.core.errors import UserError
from promptdistill.core.redact import redact_url, url_credentials


def normalize_base_url(url: str, flag: str = "--base-url") -> str:
    """`http://h:8000` -> `http://h:8000/v1`; `.../v1/` -> `.../v1`; drop `/chat/completions`.
    A query string is kept; credentials in the URL are a UserError (issue #16)."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"{flag} {redact_url(url)!r} is not an http(s) URL; "
            "pass the endpoint's base URL, e.g. http://localhost:8000/v1"
        )
    if url_credentials(url):
        raise UserError(
            f"{flag} {redact_url(url)!r}: credentials in the URL (user:password@) are refused, "
            "since they would be sent as Basic auth and endpoints echo them back in errors; "
            "pass the URL without them and put the API key in the environment "
            "($OPENAI_API_KEY, or the variable --api-key-env names) or in a file (--api-key-file)"
        )
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    if path == "":
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def endpoint_url(base_url: str, suffix: str) -> str:
    """`suffix` (`/chat/completions`) after the base URL's path, before its query string."""
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path + suffix, parts.query, ""))
