"""`sample_run`: ask the teacher for every prompt of a persona and store the answers in RUN/.

This is the library entry point behind `promptdistill sample` (and later `promptdistill run`).
It owns the run-directory side: what is already answered (resume), what failed before (asked
again), the recorded configuration (a run never mixes outputs of different configurations),
the API key (read here, never written anywhere), and Ctrl-C (stop cleanly, keep everything).

Files: RUN/samples.jsonl (one record per answered prompt, appended as answers arrive),
RUN/failures.jsonl (prompts that failed for good in the latest run), RUN/config.yaml stage
`sample` (the resolved SampleConfig, without secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from promptdistill.config import SampleConfig, SamplingParams
from promptdistill.errors import UserError
from promptdistill.personas import LoadedPersona, UserPrompt, expand_prompts, heldout_prompts
from promptdistill.personas import load_persona as _load_persona
from promptdistill.store import JsonlWriter, RunDir, atomic_write_bytes, redact_url
from promptdistill.teacher.engine import Engine, EngineStats, Job, RetryPolicy
from promptdistill.teacher.limits import Limits
from promptdistill.teacher.progress import Progress
from promptdistill.teacher.transport import (
    ChatResult,
    FatalError,
    Transport,
    chat_body,
    normalize_base_url,
)

STAGE = "sample"
# fields of the recorded stage config that must match for a run to grow
_MUST_MATCH = ("persona", "seed", "teacher.model", "sampling.temperature", "sampling.top_p",
               "sampling.max_tokens", "sampling.seed")  # fmt: skip


@dataclass
class SampleSummary:
    run_dir: str
    base_url: str
    model: str
    requested: int = 0  # prompts this run should have answers for (training + held-out)
    answered_before: int = 0
    answered_now: int = 0
    failed: int = 0
    pending: int = 0  # neither answered nor failed (interrupted, or stopped by a fatal error)
    truncated: int = 0
    retries: int = 0
    rate_limited: int = 0
    max_concurrency: int = 0
    min_concurrency: int = 0
    elapsed_s: float = 0.0
    sampling_s: float = 0.0  # from the first request to the last answer
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return self.answered_before + self.answered_now == self.requested


def sampling_for(
    persona: LoadedPersona,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
) -> SamplingParams:
    """The persona's `sampling` block, with the given (non-None) values on top."""
    overrides = {
        k: v
        for k, v in dict(
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
        ).items()
        if v is not None
    }
    return persona.persona.sampling.model_copy(update=overrides)


def read_api_key(config: SampleConfig) -> str | None:
    """From --api-key-file, else the environment variable (OPENAI_API_KEY by default)."""
    t = config.teacher
    if t.api_key_file:
        path = Path(t.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UserError(f"--api-key-file {path}: cannot read it ({e.strerror})") from None
        if not key:
            raise UserError(f"--api-key-file {path} is empty; put the API key in it")
        return key
    key = os.environ.get(t.api_key_env, "").strip()
    if not key and t.api_key_env != "OPENAI_API_KEY":
        raise UserError(
            f"--api-key-env {t.api_key_env}: that environment variable is not set or empty"
        )
    return key or None


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


def recorded_config(config: SampleConfig) -> dict[str, Any]:
    """What config.yaml keeps: the resolved config, URL without credentials, no key."""
    data = config.model_dump(mode="json")
    if config.teacher.base_url:
        data["teacher"]["base_url"] = redact_url(normalize_base_url(config.teacher.base_url))
    return data


def check_compatible(run: RunDir, config: SampleConfig, persona: LoadedPersona) -> None:
    """Refuse to add samples made under a different configuration to an existing run."""
    old = run.stage_config(STAGE)
    new = recorded_config(config)
    if old is not None:
        for key in _MUST_MATCH:
            if _get(old, key) != _get(new, key):
                flag = "--" + key.split(".")[-1].replace("_", "-")
                raise UserError(
                    f"{run.config_path}: this run was sampled with {key}={_get(old, key)!r}, "
                    f"not {_get(new, key)!r}; samples from different configurations must not "
                    f"be mixed: pass the same {flag if key != 'persona' else 'persona'} "
                    "or use a new --run directory"
                )
    # the persona file may have been edited since: compare the system prompt itself
    for record in _complete_records(run.samples):
        messages = record.get("messages") or []
        system = messages[0] if messages and messages[0].get("role") == "system" else None
        if system is not None and system.get("content") != persona.persona.system_prompt:
            raise UserError(
                f"{run.samples}: its samples were made with a different system prompt than "
                f"{persona.path} has now; use a new --run directory"
            )
        break


def _complete_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, streamed line by line (samples.jsonl of 100k answers with a
    long system prompt in each is hundreds of MB; `store.read_jsonl` reads it whole). Same
    rules as read_jsonl: a torn last line is skipped, a bad line elsewhere is an error."""
    if not path.exists():
        return
    with path.open("rb") as f:
        previous: bytes | None = None
        for number, line in enumerate(f):  # `number` is the previous line's 1-based number
            if previous is not None:
                try:
                    yield orjson.loads(previous)
                except orjson.JSONDecodeError:
                    raise UserError(
                        f"{path}:{number}: not valid JSON; fix or delete that line"
                    ) from None
            previous = line if line.strip() else None
        if previous is not None and previous.endswith(b"\n"):
            with contextlib.suppress(orjson.JSONDecodeError):  # garbage from a crash: skip
                yield orjson.loads(previous)


# transformers serve on 2 CPU cores: a request the server has queued is still computed after the
# client gave up on it, so with 64 in flight the last ones waited minutes, timed out, and their
# retries doubled the work until nothing finished. Few in flight and a long timeout instead;
# LOCAL_CONCURRENCY is the measured best on the dev machine (docs/benchmarks.md, local teacher).
LOCAL_CONCURRENCY = 4
LOCAL_TIMEOUT_S = 1800.0


def for_local_teacher(config: SampleConfig, say: Callable[[str], None]) -> SampleConfig:
    t = config.teacher
    if t.concurrency <= LOCAL_CONCURRENCY and t.timeout_s >= LOCAL_TIMEOUT_S:
        return config
    teacher = t.model_copy(
        update={
            "concurrency": min(t.concurrency, LOCAL_CONCURRENCY),
            "timeout_s": max(t.timeout_s, LOCAL_TIMEOUT_S),
        }
    )
    say(
        f"local teacher: {teacher.concurrency} requests in flight, {teacher.timeout_s:.0f} s "
        "timeout (a CPU server queues the rest; retrying them would only add work)"
    )
    return config.model_copy(update={"teacher": teacher})


def _job(p: UserPrompt, system_prompt: str) -> Job:
    meta: dict[str, Any] = {"split": p.split, "prompt_set": p.prompt_set, "category": p.category}
    if p.gold is not None:
        meta["gold"] = p.gold
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": p.text}]
    return Job(p.id, messages, meta)


def sample_run(
    config: SampleConfig,
    run: RunDir,
    console: Console | None = None,
    live: bool | None = None,
    log_every_s: float = 5.0,
    log: Callable[[str], None] | None = None,
    handle_sigint: bool = True,
    persona: LoadedPersona | None = None,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
) -> SampleSummary:
    """Answer every prompt of `config` into `run`. Resumable; see the module docstring.

    `persona` may pass in `config.persona` already loaded (the CLI loads it for its defaults).
    From another thread (`run --stream`): setting `stop` stops sampling as Ctrl-C does, and
    `ready` is set once this run's config.yaml entry is written.

    Raises UserError for bad input and for fatal endpoint errors (401/403/404, unreachable);
    answers received before a fatal error stay on disk.
    """
    started = time.monotonic()
    console = console or Console(highlight=False)
    say = log or (lambda msg: console.print(msg, highlight=False, soft_wrap=True))
    persona = persona or _load_persona(config.persona)
    prompts = expand_prompts(persona, config.n, config.seed)
    if config.include_heldout:
        prompts = heldout_prompts(persona) + prompts
    run.create()
    check_compatible(run, config, persona)
    api_key = read_api_key(config) if config.teacher.base_url else None

    wanted = {p.id for p in prompts}
    done_ids = {r["id"] for r in _complete_records(run.samples) if r.get("id") in wanted}
    todo = [p for p in prompts if p.id not in done_ids]
    base = config.teacher.base_url
    summary = SampleSummary(
        run_dir=str(run.path),
        base_url=redact_url(normalize_base_url(base)) if base else "local teacher",
        model=config.teacher.model,
        requested=len(prompts),
        answered_before=len(done_ids),
        max_concurrency=config.teacher.concurrency,
        min_concurrency=config.teacher.concurrency,
    )
    run.save_stage_config(STAGE, recorded_config(config))
    if ready is not None:
        ready.set()
    # failures of an earlier run are asked again now; the file lists this run's failures only
    atomic_write_bytes(run.failures, b"")
    if not todo:
        summary.elapsed_s = time.monotonic() - started
        return summary

    with contextlib.ExitStack() as stack:
        if base is None:
            from promptdistill.teacher.local import running_local_teacher

            config = for_local_teacher(config, say)
            summary.max_concurrency = summary.min_concurrency = config.teacher.concurrency

            say(f"starting the local teacher ({config.teacher.model}) ...")
            local = stack.enter_context(running_local_teacher(config.teacher.model, log=say))
            base_url, model = local.base_url, local.model
            say(f"local teacher started at {redact_url(base_url)}")
            stack.callback(say, "local teacher shut down")
        else:
            base_url, model = base, config.teacher.model
        summary.base_url = redact_url(normalize_base_url(base_url))
        asyncio.run(
            _sample_async(
                config, run, todo, persona, base_url, model, api_key, summary, console, live,
                log_every_s, handle_sigint, stop, warm_up=base is None,
            )
        )  # fmt: skip
    summary.elapsed_s = time.monotonic() - started
    return summary


async def _sample_async(
    config: SampleConfig,
    run: RunDir,
    todo: list[UserPrompt],
    persona: LoadedPersona,
    base_url: str,
    model: str,
    api_key: str | None,
    summary: SampleSummary,
    console: Console,
    live: bool | None,
    log_every_s: float,
    handle_sigint: bool,
    stop_when: threading.Event | None = None,
    warm_up: bool = False,
) -> None:
    t = config.teacher
    s = config.sampling
    teacher_info = {
        "base_url": summary.base_url,
        "model": config.teacher.model,  # the local teacher's `model` is a cache path
        "sampling": s.model_dump(mode="json"),
    }
    system_prompt = persona.persona.system_prompt
    stats = EngineStats(total=len(todo))
    # the local teacher's prefix cache needs one finished prefill first (limits.AdaptiveConcurrency)
    limits = Limits(t.concurrency, t.rpm, t.tpm, warm_up=warm_up)
    policy = RetryPolicy(max_retries=t.max_retries)

    def body(job: Job) -> dict[str, Any]:
        return chat_body(model, job.messages, s.temperature, s.top_p, s.max_tokens, s.seed)

    def jobs() -> Iterator[Job]:
        for p in todo:
            yield _job(p, system_prompt)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    sampling_start = time.monotonic()
    last_answer = sampling_start
    # every line is flushed to the OS as it is written (kill -9 loses nothing); an fsync (for
    # power cuts) blocks the event loop for ~10 ms, so it is done every 1024 samples only
    with (
        JsonlWriter(run.samples, fsync_every=1024) as samples,
        JsonlWriter(run.failures) as failures,
    ):

        def on_sample(job: Job, r: ChatResult, attempts: int) -> None:
            nonlocal last_answer
            last_answer = time.monotonic()
            record: dict[str, Any] = {
                "id": job.id,
                **job.meta,
                "messages": [*job.messages, {"role": "assistant", "content": r.content}],
                "finish_reason": r.finish_reason,
                "truncated": r.finish_reason == "length",
                "usage": r.usage,
                "latency_s": round(r.latency_s, 4),
                "attempts": attempts,
                "teacher": teacher_info,
            }
            samples.write(record)

        def on_failure(job: Job, error: str, kind: str, status: int | None, tries: int) -> None:
            failures.write(
                {
                    "id": job.id,
                    **job.meta,
                    "prompt": job.messages[-1]["content"],
                    "error": error,
                    "kind": kind,
                    "status": status,
                    "attempts": tries,
                    "teacher": teacher_info,
                }
            )

        if handle_sigint:
            # first Ctrl-C: stop cleanly; a second one falls through to the default handler
            def on_sigint() -> None:
                stop.set()
                loop.remove_signal_handler(signal.SIGINT)

            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGINT, on_sigint)
        if stop_when is not None:  # set from another thread, so polled (asyncio.Event is not)

            async def watch() -> None:
                while not stop_when.is_set():
                    await asyncio.sleep(0.1)
                stop.set()

            watcher = asyncio.create_task(watch())
        engine = Engine(
            Transport(base_url, api_key, t.concurrency, t.timeout_s),
            limits, body, on_sample, on_failure, policy, stats, s.max_tokens,
        )  # fmt: skip
        fatal: FatalError | None = None
        finished = False
        try:
            async with (
                engine.transport,
                Progress(stats, limits.concurrency, console, live=live, log_every_s=log_every_s),
            ):
                try:
                    finished = await engine.run(jobs(), stop)
                except FatalError as e:
                    fatal = e
                    finished = False
                except OSError as e:  # writing a sample failed: disk full, folder removed
                    raise UserError(
                        f"cannot write to {run.path}: {e.strerror or e}; free some space or "
                        "check the folder, then rerun the same command to go on"
                    ) from None
        finally:
            if stop_when is not None:
                watcher.cancel()
            if handle_sigint:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(signal.SIGINT)
            summary.answered_now = stats.done
            summary.failed = stats.failed
            summary.pending = len(todo) - stats.done - stats.failed
            summary.truncated = stats.truncated
            summary.retries = stats.retries
            summary.rate_limited = stats.rate_limited
            summary.min_concurrency = limits.concurrency.min_seen
            summary.sampling_s = last_answer - sampling_start
            summary.interrupted = not finished and fatal is None
    if fatal is not None:
        kept = summary.answered_before + summary.answered_now
        raise UserError(f"{fatal} [{kept} answers kept in {run.samples}]", exit_code=3)
