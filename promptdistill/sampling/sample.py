"""`sample_run`: ask the teacher for every prompt of a persona and store the answers in RUN/.

This is the library entry point behind `promptdistill sample` (and later `promptdistill run`).
It owns the run-directory side: what is already answered (resume), what failed before (asked
again), the recorded configuration (a run never mixes outputs of different configurations),
the API key (read here, never written anywhere), and Ctrl-C (stop cleanly, keep everything).

Files: RUN/samples.jsonl (one record per answered prompt, appended as answers arrive; the
system prompt is stored once, in RUN/system-prompts/, and each record names it by its hash:
core/samples.py), RUN/failures.jsonl (prompts that failed for good in the latest run),
RUN/config.yaml stage `sample` (the resolved SampleConfig, without secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

from rich.console import Console

from promptdistill.clients.answers import ChatClient
from promptdistill.clients.endpoint import (
    ChatResult,
    FatalError,
    normalize_base_url,
)
from promptdistill.clients.in_process import BATCH_SIZE, load_in_process_teacher
from promptdistill.clients.keys import key_source, read_api_key
from promptdistill.core.config import SampleConfig, StudentConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_bytes, os_error
from promptdistill.core.redact import redact_url
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader
from promptdistill.personas import (
    LoadedPersona,
    UserPrompt,
    expand_prompts,
    heldout_prompts,
    load_run_persona,
    teacher_system,
)
from promptdistill.sampling.batch_lines import Prepared
from promptdistill.sampling.compat import check_compatible, recorded_config
from promptdistill.sampling.correct import (
    Attempts,
    check_keep,
    correctness,
    next_attempt,
    prompt_states,
    retry_job,
)
from promptdistill.sampling.cost import prices
from promptdistill.sampling.engine import Engine, EngineStats, Job, RetryPolicy
from promptdistill.sampling.limits import Limits
from promptdistill.sampling.pool import Pool, endpoint_pool
from promptdistill.sampling.progress import Progress
from promptdistill.sampling.records import SampleRecords
from promptdistill.sampling.requests import prompt_job, request_body, teacher_record
from promptdistill.sampling.summary import SampleSummary
from promptdistill.sampling.turns import Conversations

STAGE = "sample"


def for_local_teacher(config: SampleConfig, say: Callable[[str], None]) -> SampleConfig:
    """The embedded teacher answers in batches of up to BATCH_SIZE rows in this process
    (clients/in_process.py); more requests in flight would only wait for the next batch."""
    t = config.teacher
    if t.concurrency <= BATCH_SIZE:
        return config
    say(f"local teacher: batches of up to {BATCH_SIZE} answers, in this process")
    teacher = t.model_copy(update={"concurrency": BATCH_SIZE})
    return config.model_copy(update={"teacher": teacher})


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
    lock: bool = True,
    batches: Callable[[Prepared], None] | None = None,
) -> SampleSummary:
    """Answer every prompt of `config` into `run`. Resumable; see the module docstring.

    `persona` may pass in `config.persona` already loaded (the CLI loads it for its defaults).
    From another thread (`run --stream`): setting `stop` stops sampling as Ctrl-C does, and
    `ready` is set once this run's config.yaml entry is written. `lock`: hold the run's lock
    (RunDir.locked) while sampling; False where the caller holds it (`promptdistill run`).
    `batches` takes over once the run is prepared, instead of online sampling (issue #15:
    sampling/batch_run.py).

    Raises UserError for bad input and for fatal endpoint errors (401/403/404, unreachable);
    answers received before a fatal error stay on disk.
    """
    started = time.monotonic()
    console = console or Console(highlight=False)
    say = log or (lambda msg: console.print(msg, highlight=False, soft_wrap=True))
    if config.logprobs and config.teacher.base_url is None and batches is None:
        raise UserError(
            "--logprobs: the embedded local teacher records no logprobs, "
            "and needs none: `train --objective kd` reads its whole distribution in process"
        )
    check_keep(config)
    base = config.teacher.base_url
    if base is not None:
        normalize_base_url(base)  # a bad URL fails before the run directory exists
    persona = persona or load_run_persona(config.persona, config.data_dir)
    prompts = expand_prompts(persona, config.n, config.seed)
    if config.include_heldout:
        prompts = heldout_prompts(persona) + prompts
    api_key = read_api_key(config.teacher, say) if base else None
    _warn_long_prompt(run, config, persona, say)
    run.create()
    with run.locked() if lock else contextlib.nullcontext(run):
        return _sample_locked(
            config, run, persona, prompts, api_key, console, say, started, live, log_every_s,
            handle_sigint, stop, ready, batches,
        )  # fmt: skip


def _warn_long_prompt(
    run: RunDir, config: SampleConfig, persona: LoadedPersona, say: Callable[[str], None]
) -> None:
    """Warn when the system prompt is longer than the context of a model that is run with it:
    the local teacher, and the student's base (eval, kd). Training itself never needs it."""
    from promptdistill.models.context import overlong_warning

    recorded = (run.stage_config("train") or {}).get("student") or {}
    roles: dict[str, list[str]] = {}
    if config.teacher.base_url is None:
        roles.setdefault(config.teacher.model, []).append("local teacher")
    student = str(recorded.get("model") or StudentConfig().model)
    roles.setdefault(student, []).append("student's base model (eval and kd run it prompted)")
    for model, names in roles.items():
        warning = overlong_warning(persona.name, persona.persona.system_prompt, model,
                                   " and the ".join(names))  # fmt: skip
        if warning:
            say(warning)


def _sample_locked(
    config: SampleConfig,
    run: RunDir,
    persona: LoadedPersona,
    prompts: list[UserPrompt],
    api_key: str | None,
    console: Console,
    say: Callable[[str], None],
    started: float,
    live: bool | None,
    log_every_s: float,
    handle_sigint: bool,
    stop: threading.Event | None,
    ready: threading.Event | None,
    batches: Callable[[Prepared], None] | None,
) -> SampleSummary:
    """`sample_run` once its inputs are checked and the run is created (and locked)."""
    base = config.teacher.base_url
    check_compatible(run, config, persona)

    wanted = {p.id for p in prompts}
    extra: set[str] = set()  # training samples -n does not ask for (an earlier, larger -n)
    reader = SampleReader(run.samples, on_skip=lambda m: say(f"[yellow]warning:[/] {m}; skipped"))
    records = list(reader.records())
    for r in records:
        rid = str(r.get("id"))
        if rid not in wanted and "id" in r and r.get("split") != "heldout":
            extra.add(rid)
    # per prompt, the attempt to ask now: the first, a retry (--keep correct), or none
    states = prompt_states(records, wanted)
    done_ids = set(states)
    if extra:  # `train` uses every sample: "all N prompts answered" must not suggest N
        say(
            f"[yellow]warning:[/] {run.samples} holds {len(extra)} more training samples than "
            f"-n {config.n} asks for (from an earlier run with a larger -n); `train` uses all "
            "of them: sample into a new --run directory for a smaller set"
        )
    asks = [(p, next_attempt(states.get(p.id), config, p.gold, p.split)) for p in prompts]
    todo = [(p, k) for p, k in asks if k >= 0]
    gold = {p.id: (p.split, p.gold) for p in prompts}
    summary = SampleSummary(
        run_dir=str(run.path),
        base_url=redact_url(normalize_base_url(base)) if base else "local teacher",
        model=config.teacher.model,
        requested=len(prompts),
        answered_before=len(done_ids),
        max_concurrency=config.teacher.concurrency,
        min_concurrency=config.teacher.concurrency,
    )
    if base:
        summary.price_in, summary.price_out = prices(
            config.teacher.model, config.price_in, config.price_out
        )
    run.save_stage_config(STAGE, recorded_config(config))
    try:  # `run --stream`'s trainer reads samples.jsonl as soon as `ready` is set
        run.samples.touch(exist_ok=True)
    except OSError as e:
        raise os_error(e, run.samples) from None
    if ready is not None:
        ready.set()
    # failures of an earlier run are asked again now; the file lists this run's failures only
    atomic_write_bytes(run.failures, b"")
    if batches is not None:
        batches(Prepared(
            config=config, run=run, todo=[p for p, _ in todo], done_ids=done_ids, persona=persona,
            api_key=api_key, summary=summary, console=console, say=say, live=live,
            log_every_s=log_every_s, handle_sigint=handle_sigint, stop=stop,
        ))  # fmt: skip
        summary.elapsed_s = time.monotonic() - started
        summary.correctness = correctness(SampleReader(run.samples).records(), config, gold)
        return summary
    if not todo:
        summary.elapsed_s = time.monotonic() - started
        summary.correctness = correctness(records, config, gold)
        return summary

    client: ChatClient | None = None  # None: the endpoint at base_url
    if base is None:
        config = for_local_teacher(config, say)
        summary.max_concurrency = summary.min_concurrency = config.teacher.concurrency
        say(f"loading the local teacher ({config.teacher.model}) ...")
        client = load_in_process_teacher(config.teacher.model, config.teacher.concurrency, say)
        summary.base_url = client.public_url
    else:
        summary.base_url = redact_url(normalize_base_url(base))
    asyncio.run(
        _sample_async(
            config, run, todo, persona, base, client, config.teacher.model, api_key, summary,
            console, live, log_every_s, handle_sigint, stop,
        )
    )  # fmt: skip
    summary.elapsed_s = time.monotonic() - started
    summary.correctness = correctness(SampleReader(run.samples).records(), config, gold)
    return summary


# Ctrl-C, and `kill` / `timeout` (SIGTERM), stop sampling the same way: cleanly, with every
# answer kept and the line that says how to resume (issue #16)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.asynccontextmanager
async def stopping(
    stop: asyncio.Event,
    handle_sigint: bool,
    stop_when: threading.Event | None,
    summary: SampleSummary | None = None,
) -> AsyncIterator[None]:
    """`stop` is set by the first Ctrl-C or SIGTERM (a second goes to the handler that was
    there before: KeyboardInterrupt, or cli/app.py's exit), or when `stop_when` is set from
    another thread (polled: an asyncio.Event is not thread-safe). The signal is recorded in
    `summary.stop_signal`."""
    loop = asyncio.get_running_loop()
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if handle_sigint else {}

    def restore() -> None:
        for sig, handler in before.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, TypeError):
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)  # asyncio leaves SIG_DFL behind

    if handle_sigint:

        def on_signal(signum: int) -> None:
            stop.set()
            if summary is not None:
                summary.stop_signal = signum
            restore()

        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal, sig)

    async def watch(event: threading.Event) -> None:
        while not event.is_set():
            await asyncio.sleep(0.1)
        stop.set()

    watcher = asyncio.create_task(watch(stop_when)) if stop_when is not None else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
        restore()


async def _sample_async(
    config: SampleConfig,
    run: RunDir,
    todo: list[tuple[UserPrompt, int]],
    persona: LoadedPersona,
    base_url: str | None,
    client: ChatClient | None,
    model: str,
    api_key: str | None,
    summary: SampleSummary,
    console: Console,
    live: bool | None,
    log_every_s: float,
    handle_sigint: bool,
    stop_when: threading.Event | None = None,
) -> None:
    t, s = config.teacher, config.sampling
    teacher_info = teacher_record(config, summary.base_url)
    system_prompt = persona.persona.system_prompt
    # the teacher's system prompt per prompt set: the persona's and its teacher instructions
    systems = {p.prompt_set: teacher_system(persona, p.prompt_set) for p, _ in todo}
    stats = EngineStats(total=len(todo))
    limits = Limits(t.concurrency, t.rpm, t.tpm)

    body = request_body(config, model)

    def jobs() -> Iterator[Job]:
        for p, k in todo:
            job = prompt_job(p, systems[p.prompt_set])
            yield retry_job(job, k, s.seed) if k else job

    stop = asyncio.Event()
    sampling_start = time.monotonic()
    records = SampleRecords(run, teacher_info, system_prompt)
    # grades answers to prompts with a gold answer and queues retries (sampling/correct.py)
    attempts = Attempts(config, jobs(), records.on_sample, stats)
    on_sample: Callable[[Job, ChatResult, int], Job | None] = attempts.on_sample
    on_failure = records.on_failure
    if config.turns > 1:
        who = f"an AI assistant ({persona.persona.description.strip()})"
        convos = Conversations(config.turns, who, records.on_conversation, records.on_failure)
        on_sample, on_failure = convos.on_sample, convos.on_failure
    source = key_source(t) if api_key else None
    if client is not None:  # the embedded teacher, in process
        pool = Pool.single(client, limits.concurrency)
    else:  # one endpoint, or several (issue #15)
        assert base_url is not None
        pool = endpoint_pool(t, base_url, api_key, limits, source)
    summary.max_concurrency = summary.min_concurrency = pool.maximum
    engine = Engine(
        pool, limits, body, on_sample, on_failure, RetryPolicy(max_retries=t.max_retries), stats,
        s.max_tokens,
    )  # fmt: skip
    fatal: FatalError | None = None
    finished = False
    failing = False
    try:
        async with (
            stopping(stop, handle_sigint, stop_when, summary),
            pool,
            Progress(stats, pool, console, live=live, log_every_s=log_every_s),
        ):
            try:
                finished = await engine.run(attempts, stop)
                while finished and attempts.has_retries:  # retries queued as a pass drained
                    finished = await engine.run(attempts, stop)
            except FatalError as e:
                fatal = e
            except (OSError, UserError) as e:  # writing a sample failed: disk full, folder gone
                kept = summary.answered_before + records.written
                why = str(e) if isinstance(e, UserError) else f"cannot write to {run.path}: {e}"
                raise UserError(f"{why} [{kept} answers kept in {run.samples}]") from None
    except BaseException:
        failing = True
        raise
    finally:
        summary.answered_now = records.written - attempts.reanswered  # prompts new to the run
        summary.reasked, summary.reanswered = attempts.reasked, attempts.reanswered
        summary.failed = stats.failed
        summary.pending = stats.total - stats.done - stats.failed
        summary.truncated = stats.truncated
        summary.input_tokens += stats.input_tokens
        summary.output_tokens += stats.output_tokens
        summary.retries = stats.retries
        summary.rate_limited = stats.rate_limited
        summary.min_concurrency, summary.endpoints = pool.min_seen, pool.report()
        summary.sampling_s = records.last_answer - sampling_start
        summary.interrupted = not finished and fatal is None
        try:
            records.close()
        except UserError:  # a full disk fails the close too: say it once, the first time
            if not failing:
                raise
    if fatal is not None:
        kept = summary.answered_before + summary.answered_now
        raise UserError(f"{fatal} [{kept} answers kept in {run.samples}]", exit_code=3)
