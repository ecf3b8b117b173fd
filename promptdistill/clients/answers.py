"""What an endpoint's answer means: the typed errors, `ChatResult`, and the checks every answer
gets, online (clients/endpoint.py: `Transport`) or read from a batch file (sampling/batch_lines.py).

Every failure is one of three exceptions, so callers decide by type, not by status code:
- `RetryableError`: 429, 408, 409, 5xx, timeouts, dropped connections, truncated or malformed
  bodies, and (bounded, `kind="content"`) empty or content-filtered answers;
- `PromptError`: this prompt cannot be answered (400, 413, 422, other 4xx); record and go on;
- `FatalError`: no prompt can be answered (401, 403, 404, 405, 429 `insufficient_quota`); stop
  the run at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from promptdistill.clients.waits import asked_wait, error_message, parse_retry_after
from promptdistill.core.redact import redact

# --------------------------------------------------------------------------- errors


class TransportError(Exception):
    """Base of the request errors. Messages never contain the API key (see `Transport._error`).
    An HTTP error keeps the `status` and the server's own `detail`, so a caller can word it
    for its own display (the REPL's panel) while sampling shows the message as it is."""

    status: int | None = None
    detail: str = ""


class RetryableError(TransportError):
    """Worth asking again. `retry_after` (seconds) comes from the server's headers, if any.

    kind: "rate_limit" (429), "server" (408, 409, 5xx), "timeout", "dropped" (connection lost
    mid-request), "unreachable" (could not connect), "body" (truncated or malformed), "content"
    (empty answer or content filter: retried only a few times).
    """

    def __init__(
        self,
        message: str,
        kind: str,
        status: int | None = None,
        retry_after: float | None = None,
        asked_wait: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.asked_wait = asked_wait  # the server's own retry-after header, as it sent it


class PromptError(TransportError):
    """The endpoint refuses this one prompt (e.g. 400: too long); other prompts may work."""

    def __init__(self, message: str, status: int | None = None, kind: str = "refused") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class FatalError(TransportError):
    """No prompt can succeed (bad key, unknown model or URL). The message says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True, kw_only=True)
class ChatResult:
    content: str
    finish_reason: str | None
    usage: dict[str, Any]
    latency_s: float | None  # None: not measured (an answer from a batch)
    model: str | None
    # with `logprobs: true, top_logprobs: K`: per answer token [token, logprob, [[alt, lp], ...]]
    logprobs: list[list[Any]] | None = None
    # with vLLM's `prompt_logprobs: K`: per prompt token {token id: {"logprob": ...}} (None for
    # the first), and the prompt's token ids
    prompt_logprobs: list[Any] | None = None
    prompt_token_ids: list[int] | None = None


class ChatClient(Protocol):
    """What the sampling engine asks of a teacher: an HTTP endpoint (clients/endpoint.py,
    `Transport`) or the embedded model in this process (clients/in_process.py)."""

    public_url: str  # safe to show: no key in it

    async def chat(self, body: dict[str, Any]) -> ChatResult: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- checks


def raise_for_status(
    status: int,
    raw: bytes,
    headers: Any,
    where: str,
    secrets: list[str | None] | None = None,
    key_source: str | None = None,
) -> None:
    """Raise the typed error for an HTTP error answer from `where` (a redacted URL, or a batch
    file's name): what the engine decides by. `secrets` are cut out of the server's text;
    `key_source` says where the API key came from, for a 401's message (clients/keys.py)."""
    detail = redact(error_message(raw), secrets or [])
    try:
        _classify(status, detail, raw, headers, where, key_source)
    except TransportError as e:
        e.status, e.detail = status, detail
        raise


def _classify(
    status: int, detail: str, raw: bytes, headers: Any, where: str, key_source: str | None
) -> None:
    said = f" ({detail})" if detail else ""
    if status == 429 and b"insufficient_quota" in raw:
        # OpenAI's "exceeded your current quota" is a 429 too, but waiting will not help
        raise FatalError(
            f"{where} answered 429{said}: the account's quota is used up; check its plan "
            "and billing, then rerun the same command to go on"
        )
    if status == 429:
        raise RetryableError(
            f"429 rate limited: {detail}", "rate_limit", status, parse_retry_after(headers),
            asked_wait(headers),
        )  # fmt: skip
    if status in (408, 409) or status >= 500:
        raise RetryableError(
            f"{status} from the endpoint: {detail}",
            "server",
            status,
            parse_retry_after(headers),
            asked_wait(headers),
        )
    if status in (401, 403) and key_source is not None:
        raise FatalError(
            f"{where} answered {status}{said}: the API key from {key_source} was "
            "refused; put a valid key there, or name another variable with --api-key-env "
            "or another file with --api-key-file"
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


def parse_completion(
    raw: Any, latency: float | None, logprobs: bool = False, where: str = "the endpoint"
) -> ChatResult:
    """A chat completion's body (bytes, or JSON already parsed, as in a batch output line) as a
    ChatResult, checked as every answer is: malformed, empty, content-filtered, no logprobs."""
    try:
        data = orjson.loads(raw) if isinstance(raw, bytes | str) else raw
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content")
        finish_reason = choice.get("finish_reason")
        usage = data.get("usage") or {}
        tokens = ((choice.get("logprobs") or {}).get("content")) if logprobs else None
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise RetryableError(
            "malformed response body (not an OpenAI chat completion)", "body"
        ) from None
    if finish_reason == "content_filter":
        raise RetryableError("the endpoint's content filter withheld the answer", "content")
    if not isinstance(content, str) or not content.strip():
        raise RetryableError("empty answer", "content")
    if logprobs and not tokens:
        raise FatalError(
            f"{where} answered without the logprobs that --logprobs asked for "
            "(`transformers serve` ignores `logprobs`); use an endpoint that returns them "
            "(OpenAI, vLLM), or sample without --logprobs and train --objective kd with a "
            "local teacher (--teacher-model)"
        )
    return ChatResult(
        content=content,
        finish_reason=finish_reason,
        usage=usage,
        latency_s=latency,
        model=data.get("model"),
        logprobs=compact_logprobs(tokens) if tokens else None,
    )


def compact_logprobs(content: list[Any]) -> list[list[Any]]:
    """OpenAI's `logprobs.content` (one object per answer token, with `top_logprobs`) as
    [token, logprob, [[alternative, logprob], ...]] per token: a third of the JSON. A token
    whose text is not whole characters keeps its `bytes` as a fourth element."""
    out: list[list[Any]] = []
    for t in content:
        if not isinstance(t, dict) or "token" not in t or "logprob" not in t:
            raise RetryableError("malformed logprobs in the answer", "body")
        top = [[a.get("token"), a.get("logprob")] for a in t.get("top_logprobs") or []]
        entry: list[Any] = [t["token"], t["logprob"], top]
        if "\ufffd" in str(t["token"]) and t.get("bytes") is not None:
            entry.append(t["bytes"])
        out.append(entry)
    return out
