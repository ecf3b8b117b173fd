"""The OpenAI batch JSONL format, both ways, and merging its answers into a run (issue #15).

One format serves the Batch API (`/v1/files` + `/v1/batches`), `vllm run-batch -i F -o OUT`
and the Batch API's web console:

    in:  {"custom_id": ID, "method": "POST", "url": "/v1/chat/completions", "body": {...}}
    out: {"id": ..., "custom_id": ID, "response": {"status_code": 200, "body": {...}},
          "error": null}

`custom_id` is the prompt id, and `body` is exactly the request online sampling sends
(requests.py: `request_body`). Output lines come in any order, and an answer is checked as an
online one is (clients/endpoint.py: `parse_completion`, `raise_for_status`): malformed, empty
or content-filtered answers are lines that failed, a truncated one is kept and flagged.
`merge_results` writes each prompt's first good answer, once, and sorts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from rich.console import Console

from promptdistill.clients.endpoint import (
    ChatResult,
    FatalError,
    PromptError,
    RetryableError,
    TransportError,
    parse_completion,
    raise_for_status,
)
from promptdistill.core.config import SampleConfig
from promptdistill.core.rundir import RunDir
from promptdistill.personas import LoadedPersona, UserPrompt
from promptdistill.sampling.engine import Job
from promptdistill.sampling.summary import SampleSummary

CHAT_URL = "/v1/chat/completions"


class Records(Protocol):
    """Where answers go: samples.jsonl and failures.jsonl (records.py: `SampleRecords`)."""

    def on_sample(self, job: Job, r: ChatResult, attempts: int) -> Any: ...

    def on_failure(
        self, job: Job, error: str, kind: str, status: int | None, tries: int
    ) -> None: ...

    def close(self) -> None: ...


@dataclass(kw_only=True)
class Prepared:
    """A run that sample.py has prepared (checked, its config recorded, its answered prompts
    known) and hands to `sample_run(batches=...)` instead of sampling online."""

    config: SampleConfig
    run: RunDir
    todo: list[UserPrompt]  # the prompts without an answer, in order
    done_ids: set[str]
    persona: LoadedPersona
    api_key: str | None
    summary: SampleSummary
    console: Console
    say: Callable[[str], None]
    live: bool | None
    log_every_s: float
    handle_sigint: bool
    stop: threading.Event | None


@dataclass(kw_only=True)
class BatchWork:
    """What sample.py hands the batch modules, so that they share its ids, request builder,
    records and online engine instead of having their own."""

    config: SampleConfig
    run: RunDir
    jobs: list[Job]  # the prompts without an answer, in order
    done_ids: set[str]  # prompts answered before
    body: Callable[[Job], dict[str, Any]]  # the one request builder
    open_records: Callable[[], Records]
    # asks these jobs online (`--batch-fallback online`) until the event is set
    online: Callable[[list[Job], asyncio.Event], Awaitable[None]]
    summary: SampleSummary
    console: Console
    say: Callable[[str], None]
    api_key: str | None
    live: bool | None = None
    log_every_s: float = 5.0
    stopping: Callable[[asyncio.Event], contextlib.AbstractAsyncContextManager[None]]


def request_line(job: Job, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": job.id, "method": "POST", "url": CHAT_URL, "body": body})


def request_lines(jobs: Iterable[Job], body: Callable[[Job], dict[str, Any]]) -> Iterator[bytes]:
    for job in jobs:
        yield request_line(job, body(job)) + b"\n"


def chunks(
    lines: Iterable[tuple[Job, bytes]], max_requests: int, max_bytes: int
) -> Iterator[list[tuple[Job, bytes]]]:
    """Consecutive groups of at most `max_requests` lines and `max_bytes` bytes (a line longer
    than `max_bytes` goes alone; the server will say what it thinks of it)."""
    chunk: list[tuple[Job, bytes]] = []
    size = 0
    for job, line in lines:
        if chunk and (len(chunk) >= max_requests or size + len(line) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append((job, line))
        size += len(line)
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- merging


@dataclass
class Merged:
    """What merging one results file did, line by line."""

    answered: int = 0
    truncated: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    already: int = 0  # lines for prompts answered before (or twice in the file): skipped
    retry: dict[str, str] = field(default_factory=dict)  # prompt id -> why (worth asking again)
    refused: dict[str, str] = field(default_factory=dict)  # prompt id -> why (a 4xx)
    fatal: str | None = None  # an answer no prompt can get past (404 model, no logprobs)
    bad: list[str] = field(default_factory=list)  # "line N: why", lines that fit no prompt
    failed_lines: list[str] = field(default_factory=list)  # "line N (id): why"

    @property
    def failed(self) -> int:
        return len(self.retry) + len(self.refused)


def merge_results(
    lines: Iterable[tuple[int, bytes]],
    where: str,
    pending: dict[str, Job],
    done_ids: set[str],
    records: Records,
    logprobs: bool,
) -> Merged:
    """Write every good answer in `lines` ((line number, raw line)) for a prompt in `pending`
    to `records`, and take it out of `pending`: so each prompt gets one sample however often,
    and in whatever order, it appears. `where` names the file in messages."""
    out = Merged()
    for number, raw in lines:
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out.bad.append(f"line {number}: not JSON")
            continue
        cid = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(cid, str):
            out.bad.append(f"line {number}: no custom_id")
            continue
        job = pending.get(cid)
        if job is None:
            if cid in done_ids:
                out.already += 1
            else:
                out.bad.append(f"line {number}: custom_id {cid!r} is no prompt of this run")
            continue
        try:
            result = answer_of(line, where, logprobs)
        except TransportError as e:
            why = str(e)
            out.failed_lines.append(f"line {number} ({cid}): {why}")
            out.retry.pop(cid, None)
            if isinstance(e, FatalError):
                out.fatal = out.fatal or why
                out.refused[cid] = why
            elif isinstance(e, PromptError):
                out.refused[cid] = why
            else:
                out.retry[cid] = why
            continue
        records.on_sample(job, result, 1)
        del pending[cid]
        done_ids.add(cid)
        out.retry.pop(cid, None)
        out.refused.pop(cid, None)
        out.answered += 1
        out.truncated += result.finish_reason == "length"
        usage = result.usage
        out.input_tokens += int(usage.get("prompt_tokens") or 0)
        out.output_tokens += int(usage.get("completion_tokens") or 0)
    return out


def answer_of(line: dict[str, Any], where: str, logprobs: bool) -> ChatResult:
    """One output line's answer, or the typed error an online request would have raised."""
    response = line.get("response")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        if status == 200:
            return parse_completion(body, None, logprobs, where)
        if isinstance(status, int):
            raise_for_status(status, orjson.dumps(body), {}, where)
    error = line.get("error")
    if isinstance(error, dict):
        code = error.get("code") or "error"
        raise RetryableError(f"{code}: {error.get('message') or ''}".strip(": "), "server")
    raise RetryableError("a line with neither a response nor an error", "body")


def record_failures(
    merged: Merged, jobs: dict[str, Job], records: Records, only: Iterable[str] | None = None
) -> int:
    """Write the failed lines (all, or those in `only`) to failures.jsonl."""
    ids = set(only) if only is not None else set(merged.retry) | set(merged.refused)
    n = 0
    for cid in ids:
        why = merged.refused.get(cid) or merged.retry.get(cid)
        job = jobs.get(cid)
        if job is None or why is None:
            continue
        kind = "refused" if cid in merged.refused else "batch"
        records.on_failure(job, why, kind, None, 1)
        n += 1
    return n


def numbered(data: bytes) -> Iterator[tuple[int, bytes]]:
    yield from enumerate(data.splitlines(), start=1)
