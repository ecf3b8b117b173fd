"""HTTP to an OpenAI-compatible chat endpoint: one aiohttp session, orjson bodies, typed errors.

Why raw aiohttp and not the openai SDK: on the dev machine (512 in flight, 0.5 s latency, ideal
1024 req/s) the SDK's default client reached 384 req/s and the SDK on its aiohttp transport 670,
while aiohttp + orjson raw reached 942 (docs/DEVELOPERS.md). We also want our own retries only,
so nothing is retried twice (the SDK retries 2 times by default).

Every failure is turned into one of three exceptions, so the engine decides by type, not by
inspecting status codes:
- `RetryableError`: 429, 408, 409, 5xx, timeouts, dropped connections, truncated or malformed
  bodies, and (bounded, `kind="content"`) empty or content-filtered answers;
- `PromptError`: this prompt cannot be answered (400, 413, 422, other 4xx); record and go on;
- `FatalError`: no prompt can be answered (401, 403, 404, 405, 429 `insufficient_quota`); stop
  the run at once.

Base URL: like the OpenAI SDK's `base_url`, it is the prefix *before* `/chat/completions`, so
`https://api.openai.com/v1` and `http://localhost:8000/v1` are what users pass. A bare host
(`http://localhost:8000` or `.../`) gets `/v1` added, and a pasted `.../chat/completions` suffix
is dropped. See `normalize_base_url`.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from promptdistill.errors import UserError
from promptdistill.store import redact, redact_url

MAX_RETRY_AFTER_S = 120.0


# --------------------------------------------------------------------------- errors


class TransportError(Exception):
    """Base of the request errors. Messages never contain the API key (see `Transport._error`)."""


class RetryableError(TransportError):
    """Worth asking again. `retry_after` (seconds) comes from the server's headers, if any.

    kind: "rate_limit" (429), "server" (408, 409, 5xx), "timeout", "dropped" (connection lost
    mid-request), "unreachable" (could not connect), "body" (truncated or malformed), "content"
    (empty answer or content filter: retried only a few times).
    """

    def __init__(
        self, message: str, kind: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


class PromptError(TransportError):
    """The endpoint refuses this one prompt (e.g. 400: too long); other prompts may work."""

    def __init__(self, message: str, status: int | None = None, kind: str = "refused") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class FatalError(TransportError):
    """No prompt can succeed (bad key, unknown model or URL). The message says what to do."""


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class ChatResult:
    content: str
    finish_reason: str | None
    usage: dict[str, Any]
    latency_s: float
    model: str | None


def normalize_base_url(url: str) -> str:
    """`http://h:8000` -> `http://h:8000/v1`; `.../v1/` -> `.../v1`; drop `/chat/completions`."""
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"--base-url {redact_url(url)!r} is not an http(s) URL; "
            "pass the endpoint's base URL, e.g. http://localhost:8000/v1"
        )
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    if path == "":
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


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


def _error_message(body: bytes) -> str:
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


# --------------------------------------------------------------------------- transport


class Transport:
    """POST chat completions. Use as `async with Transport(...) as t: await t.chat(body)`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        concurrency: int,
        timeout_s: float,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.public_url = redact_url(self.base_url)  # safe for messages, logs and files
        self.url = self.base_url + "/chat/completions"
        self._api_key = api_key
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(connect_timeout_s, timeout_s)
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        # connector limit = concurrency: every worker has its own keep-alive connection and
        # nothing queues inside aiohttp (a queued request would burn its timeout waiting)
        connector = aiohttp.TCPConnector(
            limit=self._concurrency, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300
        )
        # no cookie jar: chat APIs are stateless, and parsing cookies costs time per request
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _error(self, text: str) -> str:
        return redact(text, [self._api_key])

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        """One request, no retries. Raises RetryableError, PromptError or FatalError."""
        assert self._session is not None, "use `async with Transport(...)`"
        start = time.perf_counter()
        try:
            async with self._session.post(self.url, data=orjson.dumps(body)) as resp:
                status = resp.status
                raw = await resp.read()
                headers = resp.headers
        except aiohttp.ConnectionTimeoutError:
            raise RetryableError(
                f"cannot connect to {self.public_url}: timed out", "unreachable"
            ) from None
        except aiohttp.ClientConnectorError as e:
            raise RetryableError(
                self._error(f"cannot connect to {self.public_url}: {e.strerror or e}"),
                "unreachable",
            ) from None
        except aiohttp.ClientPayloadError:
            raise RetryableError("truncated response body", "body") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            raise RetryableError(self._error(f"connection dropped: {e}"), "dropped") from None
        except TimeoutError:
            raise RetryableError(
                f"no answer within {self._timeout.total:g} s (--timeout)", "timeout"
            ) from None
        except aiohttp.ClientConnectionError as e:
            raise RetryableError(self._error(f"connection error: {e}"), "dropped") from None
        latency = time.perf_counter() - start
        if status != 200:
            self._raise_for_status(status, raw, headers)
        return self._parse(raw, latency)

    def _raise_for_status(self, status: int, raw: bytes, headers: Any) -> None:
        detail = self._error(_error_message(raw))
        said = f" ({detail})" if detail else ""
        where = self.public_url
        if status == 429 and b"insufficient_quota" in raw:
            # OpenAI's "exceeded your current quota" is a 429 too, but waiting will not help
            raise FatalError(
                f"{where} answered 429{said}: the account's quota is used up; check its plan "
                "and billing, then rerun the same command to go on"
            )
        if status == 429:
            raise RetryableError(
                f"429 rate limited: {detail}", "rate_limit", status, parse_retry_after(headers)
            )
        if status in (408, 409) or status >= 500:
            raise RetryableError(
                f"{status} from the endpoint: {detail}",
                "server",
                status,
                parse_retry_after(headers),
            )
        if status in (401, 403):
            raise FatalError(
                f"{where} answered {status}{said}: the API key was refused; set a valid key "
                "in $OPENAI_API_KEY, or name its variable with --api-key-env or its file with "
                "--api-key-file"
            )
        if status in (404, 405):
            raise FatalError(
                f"{where} answered {status}{said}: check --model and --base-url "
                "(the base URL usually ends in /v1, e.g. http://localhost:8000/v1)"
            )
        raise PromptError(f"{status}: {detail}", status)

    def _parse(self, raw: bytes, latency: float) -> ChatResult:
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            message = choice.get("message") or {}
            content = message.get("content")
            finish_reason = choice.get("finish_reason")
            usage = data.get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise RetryableError(
                "malformed response body (not an OpenAI chat completion)", "body"
            ) from None
        if finish_reason == "content_filter":
            raise RetryableError("the endpoint's content filter withheld the answer", "content")
        if not isinstance(content, str) or not content.strip():
            raise RetryableError("empty answer", "content")
        return ChatResult(content, finish_reason, usage, latency, data.get("model"))


def chat_body(
    model: str,
    messages: list[dict[str, str]],
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int | None,
) -> dict[str, Any]:
    """The request body, as in the OpenAI chat completions API."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
    }
    if seed is not None:
        body["seed"] = seed
    return body
