"""The one OpenAI-compatible client: chat completions, plain or streamed, with typed errors.

Sampling (sampling/engine.py), the LLM judge, eval's latency probe and the REPL's teacher panel
all talk to endpoints through `Transport`: one aiohttp session, orjson bodies, no retries of its
own (the callers decide).

Why raw aiohttp and not the openai SDK: on the dev machine (512 in flight, 0.5 s latency, ideal
1024 req/s) the SDK's default client reached 384 req/s and the SDK on its aiohttp transport 670,
while aiohttp + orjson raw reached 942 (docs/DEVELOPERS.md). We also want our own retries only,
so nothing is retried twice (the SDK retries 2 times by default).

Every failure is turned into one of three exceptions (`RetryableError`, `PromptError`,
`FatalError`), so the engine decides by type, not by status code: clients/answers.py, which
also checks every answer (it is shared with answers read from batch files, issue #15).

Base URL: like the OpenAI SDK's `base_url`, it is the prefix *before* `/chat/completions`, so
`https://api.openai.com/v1` and `http://localhost:8000/v1` are what users pass. A bare host
(`http://localhost:8000` or `.../`) gets `/v1` added, and a pasted `.../chat/completions` suffix
is dropped. A query string (Azure's `?api-version=...`) stays at the end of every request URL.
Credentials in the URL (`user:key@host`) are refused: they would go out as Basic auth, and an
endpoint may echo them back in an error. See `normalize_base_url`.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import aiohttp
import orjson

from promptdistill.clients.answers import (
    ChatResult,
    FatalError,
    PromptError,
    RetryableError,
    TransportError,
    compact_logprobs,
    parse_completion,
    raise_for_status,
)
from promptdistill.clients.base_url import endpoint_url, normalize_base_url
from promptdistill.clients.waits import MAX_RETRY_AFTER_S, error_message, parse_retry_after
from promptdistill.core.redact import redact, redact_url

# re-exported: callers import them from here
__all__ = [
    "MAX_RETRY_AFTER_S", "ChatResult", "FatalError", "PromptError", "RetryableError",
    "TransportError", "compact_logprobs", "endpoint_url", "normalize_base_url",
    "parse_completion", "parse_retry_after", "raise_for_status",
]  # fmt: skip

# `transformers serve` refuses a model name other than the one it is pinned to (the local
# teacher's is `smollm2-135m`, clients/local_server.py); when the name asked for is a path to a
# directory of that name, the client sends the pinned name instead (issue #14)
PINNED = re.compile(r"Server is pinned to '(?P<pinned>[^']+)'; requested '(?P<asked>[^']+)'")


# --------------------------------------------------------------------------- transport


@dataclass(slots=True, kw_only=True)
class StreamDelta:
    """One server-sent event of a streamed answer: new text, and at the end why it stopped
    and (most servers) the usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class Transport:
    """POST chat completions, plain (`chat`) or streamed (`stream`). The session opens on first
    use; `async with Transport(...)` (or `await close()`) closes it."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        concurrency: int,
        timeout_s: float,
        connect_timeout_s: float = 10.0,
        key_source: str | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.public_url = redact_url(self.base_url)  # safe for messages, logs and files
        self.url = endpoint_url(self.base_url, "/chat/completions")
        self._api_key = api_key
        # where the key came from, for a 401's message (clients/keys.py: key_source)
        self.key_source = key_source
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._concurrency = concurrency
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(connect_timeout_s, timeout_s)
        )
        # a stream may take long in total; what must not take long is the gap between events
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=min(connect_timeout_s, timeout_s), sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._aliases: dict[str, str] = {}  # model name asked for -> the name the server wants

    async def __aenter__(self) -> Transport:
        self._client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
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
        return self._session

    def _error(self, text: str) -> str:
        return redact(text, [self._api_key])

    def _renamed(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._aliases.get(str(body.get("model")))
        return body if name is None else {**body, "model": name}

    def _learn_alias(self, body: dict[str, Any], e: PromptError) -> dict[str, Any] | None:
        """The body again with the server's pinned model name, if `e` says the server is
        pinned to a directory of the same name as the path asked for; else None."""
        m = PINNED.search(e.detail or str(e))
        asked = body.get("model")
        if m is None or m["asked"] != asked or m["pinned"] == asked:
            return None
        if PurePath(str(asked)).name != PurePath(m["pinned"]).name:
            return None
        self._aliases[str(asked)] = m["pinned"]
        return {**body, "model": m["pinned"]}

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        """One request, no retries. Raises RetryableError, PromptError or FatalError."""
        body = self._renamed(body)
        try:
            return await self._chat(body)
        except PromptError as e:
            again = self._learn_alias(body, e)
            if again is None:
                raise
        return await self._chat(again)

    async def _chat(self, body: dict[str, Any]) -> ChatResult:
        start = time.perf_counter()
        try:
            async with self._client().post(self.url, data=orjson.dumps(body)) as resp:
                status = resp.status
                raw = await resp.read()
                headers = resp.headers
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._connection_error(e) from None
        latency = time.perf_counter() - start
        if status != 200:
            self._raise_for_status(status, raw, headers)
        self._check_content_type(headers.get("Content-Type"), raw)
        if "prompt_logprobs" in body:
            return self._parse_scored(raw, latency)
        return self._parse(raw, latency, bool(body.get("logprobs")))

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[StreamDelta]:
        """The same request with `stream: true`, one `StreamDelta` per server-sent event.
        Raises the same errors as `chat`; an `error` event mid-stream is a RetryableError."""
        body = self._renamed(body)
        try:
            async for delta in self._stream(body):
                yield delta
            return
        except PromptError as e:  # raised before the first event: the answer did not start
            again = self._learn_alias(body, e)
            if again is None:
                raise
        async for delta in self._stream(again):
            yield delta

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[StreamDelta]:
        data = orjson.dumps({**body, "stream": True})
        headers = {"Accept": "text/event-stream"}
        try:
            async with self._client().post(
                self.url, data=data, headers=headers, timeout=self._stream_timeout
            ) as resp:
                if resp.status != 200:
                    raw = await resp.content.read(4096)
                    self._raise_for_status(resp.status, raw, resp.headers)
                if "html" in (resp.headers.get("Content-Type") or "").lower():
                    self._check_content_type(resp.headers.get("Content-Type"), b"")
                async for raw_line in resp.content:
                    line = raw_line.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank separators, `: keep-alive` comments, `event:` lines
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return
                    delta = self._event(payload)
                    if delta is not None:
                        yield delta
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._connection_error(e) from None

    def _check_content_type(self, content_type: str | None, raw: bytes) -> None:
        """A 200 with a web page is not an API answer: a base URL that is the site, not the
        API root, or a login page in front of it. The engine gives up after a few in a row."""
        html = "html" in (content_type or "").lower() or raw.lstrip()[:15].lower().startswith(
            (b"<!doctype html", b"<html")
        )
        if html:
            raise RetryableError(
                f"got text/html from {self.public_url}: is --base-url the API root (it usually "
                "ends in /v1, e.g. http://localhost:8000/v1)?",
                "html",
            )

    def _event(self, payload: bytes) -> StreamDelta | None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            snippet = payload[:120].decode("utf-8", "replace")
            raise RetryableError(
                f"malformed event from {self.public_url}: {snippet}", "body"
            ) from None
        if not isinstance(event, dict):
            return None
        if "error" in event:  # a failure mid-answer, e.g. from `transformers serve`
            detail = self._error(error_message(orjson.dumps(event)))
            raise RetryableError(f"error mid-answer: {detail}", "server")
        delta = StreamDelta(usage=event.get("usage") or {})
        for choice in event.get("choices") or []:
            delta.text += (choice.get("delta") or {}).get("content") or ""
            delta.finish_reason = choice.get("finish_reason") or delta.finish_reason
        return delta

    def _connection_error(self, e: BaseException) -> RetryableError:
        """A request that got no complete HTTP answer, as a RetryableError of its kind."""
        if isinstance(e, aiohttp.ConnectionTimeoutError):
            return RetryableError(f"cannot connect to {self.public_url}: timed out", "unreachable")
        if isinstance(e, aiohttp.ClientConnectorError):
            reason = self._error(f"cannot connect to {self.public_url}: {e.strerror or e}")
            return RetryableError(reason, "unreachable")
        if isinstance(e, aiohttp.ClientPayloadError):
            return RetryableError("truncated response body", "body")
        if isinstance(e, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
            return RetryableError(self._error(f"connection dropped: {e}"), "dropped")
        if isinstance(e, TimeoutError):
            return RetryableError(f"no answer within {self.timeout_s:g} s (--timeout)", "timeout")
        return RetryableError(self._error(f"connection error: {e}"), "dropped")

    def _raise_for_status(self, status: int, raw: bytes, headers: Any) -> None:
        raise_for_status(
            status, raw, headers, self.public_url, [self._api_key], key_source=self.key_source
        )

    def _parse_scored(self, raw: bytes, latency: float) -> ChatResult:
        """A request that scores a given answer (`prompt_logprobs`, `max_tokens` 1): its
        content does not matter, its prompt logprobs do."""
        try:
            data = orjson.loads(raw)
            logprobs, ids = _parse_scored_body(data)
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            raise RetryableError("malformed response body", "body") from None
        if not isinstance(logprobs, list) or not isinstance(ids, list):
            raise FatalError(
                f"{self.public_url} returned no prompt_logprobs / prompt_token_ids, so it cannot "
                "score the student's answers (OpenAI and `transformers serve` cannot; vLLM "
                "can); pass --teacher-model PATH to score them in process"
            )
        return ChatResult(
            content="", finish_reason=None, usage=data.get("usage") or {}, latency_s=latency,
            model=data.get("model"), prompt_logprobs=logprobs, prompt_token_ids=ids,
        )  # fmt: skip

    def _parse(self, raw: bytes, latency: float, logprobs: bool = False) -> ChatResult:
        return parse_completion(raw, latency, logprobs, self.public_url)


def _parse_scored_body(data: Any) -> tuple[Any, Any]:
    """vLLM puts `prompt_logprobs` and `prompt_token_ids` at the top level of the response
    (older versions: in the first choice)."""
    choice = (data.get("choices") or [{}])[0] if isinstance(data, dict) else {}
    logprobs = data.get("prompt_logprobs") or choice.get("prompt_logprobs")
    ids = data.get("prompt_token_ids") or choice.get("prompt_token_ids")
    return logprobs, ids


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
