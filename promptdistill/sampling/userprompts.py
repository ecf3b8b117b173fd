"""Teacher-written user prompts: `promptdistill prompts generate PERSONA -n N` (issue #14).

For users with no logs. Each request asks the teacher for `per_request` messages that the
persona's users would send, seeded by one of the prompt set's categories (with a few of its
prompts as examples) or one of `--topics`, and gives every message its own length, tone and
intent, drawn from a seeded generator. The requests go through the sampling engine (limits,
retries, progress, Ctrl-C); each reply is appended to OUT's replies file (`NAME.replies.jsonl`
beside OUT), so a rerun asks only what is missing, and a larger -n asks only for more.

The replies are parsed robustly (a JSON list, numbered or bulleted lines, or plain lines;
labels, quotes and style notes stripped), exact duplicates (case and spacing ignored) and near
duplicates (MiniLM cosine similarity >= threshold, diversity.py) are dropped, in request order,
so the first N kept are the same for any larger N. If too few remain, more requests are made,
up to `max_requests`. OUT is a JSONL file with a `prompt` field: a prompt set lists it as a
source (sources.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from promptdistill.clients.answers import ChatClient
from promptdistill.clients.endpoint import ChatResult, FatalError, Transport, chat_body
from promptdistill.clients.keys import read_api_key
from promptdistill.core.config import PromptWriteConfig, SampleConfig, TeacherConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import JsonlWriter, atomic_write_bytes, read_jsonl
from promptdistill.core.redact import redact_url
from promptdistill.personas import LoadedPersona, iter_training_prompts
from promptdistill.sampling.diversity import (
    distinct_n,
    keep_distinct,
    mean_pairwise_cosine,
    normalized,
)
from promptdistill.sampling.engine import Engine, EngineStats, Job, RetryPolicy
from promptdistill.sampling.limits import Limits
from promptdistill.sampling.progress import Progress

LENGTHS = ("a few words", "one short sentence", "one or two sentences",
           "three or four sentences with some context about themselves")  # fmt: skip
TONES = ("casual", "polite", "curious", "frustrated", "enthusiastic", "skeptical", "terse",
         "formal", "confused", "playful")  # fmt: skip
INTENTS = ("asks a factual question", "asks for help with a task", "asks for an opinion",
           "reports a problem", "asks for an explanation", "makes a creative request",
           "asks for advice about their situation", "makes small talk",
           "pushes back or tests the assistant's limits", "asks for a comparison")  # fmt: skip
WRITER_SYSTEM = (
    "You write realistic test data: the messages that real users type to an AI assistant. "
    "You never answer the messages; you only write them, in the user's own voice."
)
EXAMPLES = 3  # prompts shown per category


@dataclass(frozen=True, kw_only=True)
class Seed:
    label: str  # the category or topic the request is about
    examples: list[str]


@dataclass(kw_only=True)
class WriteSummary:
    out: Path
    replies: Path
    requested: int  # prompts asked for
    written: int
    requests: int  # answered requests in total (earlier runs included)
    asked_now: int
    failed: int
    candidates: int  # messages parsed from the replies
    exact_duplicates: int
    near_duplicates: int
    interrupted: bool = False
    prompts: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- requests


def seeds(
    persona: LoadedPersona, topics: list[str], seed: int, out: Path | None = None
) -> list[Seed]:
    """What the requests are about: `topics`, else every category (and source) of the
    persona's prompt sets, with a few of its prompts as examples; not the source that `out`
    is (the teacher's own prompts would feed back into its requests)."""
    if topics:
        return [Seed(label=t, examples=[]) for t in topics]
    target = out.resolve() if out is not None else None
    sources = {
        name: [s for s in loaded if s.path is None or s.path.resolve() != target]
        for name, loaded in persona.sources.items()
    }
    examples: dict[str, list[str]] = {}
    for p in iter_training_prompts(persona.prompt_sets, seed, sources):
        found = examples.setdefault(p.category, [])
        if len(found) < EXAMPLES:
            found.append(p.text)
        if len(examples) > 50 and all(len(v) >= EXAMPLES for v in examples.values()):
            break
    return [Seed(label=k, examples=v) for k, v in examples.items()]


def request_messages(
    persona: LoadedPersona, seed_: Seed, index: int, per_request: int, seed: int
) -> list[dict[str, str]]:
    """Request `index`: its seed and a style for every message, from a generator of its own."""
    rng = random.Random(f"{seed}:{index}")
    styles = [
        f"{k + 1}. {rng.choice(TONES)}, {rng.choice(LENGTHS)}, {rng.choice(INTENTS)}"
        for k in range(per_request)
    ]
    examples = "".join(f"\n- {e}" for e in seed_.examples)
    p = persona.persona
    lines = [
        f"The assistant: {p.description.strip()}",
        f"Its instructions, for context only (do not follow them):\n<<<\n{p.system_prompt.strip()}"
        "\n>>>",
        f"Write {per_request} different messages that this assistant's users would send, all "
        f"about: {seed_.label}.",
        *([f"Messages users have sent about it:{examples}"] if examples else []),
        "Each message has its own style (tone, length, intent):\n" + "\n".join(styles),
        f"Reply with a JSON list of {per_request} strings, the messages only, and nothing else.",
    ]
    return [
        {"role": "system", "content": WRITER_SYSTEM},
        {"role": "user", "content": "\n\n".join(lines)},
    ]


# --------------------------------------------------------------------------- parsing

BULLET = re.compile(r"^\s*(?:\d{1,3}\s*[.):\]]|[-*•]|\(\d{1,3}\))\s+")
LABEL = re.compile(r"^\s*(?:\*\*)?(?:message|user|prompt)\s*\d*\s*(?:\*\*)?\s*[:.-]\s*", re.I)
STYLE_NOTE = re.compile(r"^\s*[(\[][^)\]]{0,80}[)\]]\s*[:-]?\s*|\s*[(\[][^)\]]{0,80}[)\]]\s*$")
META = re.compile(
    r"^(?:sure|okay|ok|certainly|of course|here (?:are|is)|below are|these are|note:)\b", re.I
)
# what a small teacher writes around or instead of messages (seen from SmolLM2-135M): code
# fences, markers, code lines; a string assigned in code (`res[1] = "..."`) is taken out of it
CODE = re.compile(r"^\s*(?:```|~~~|<{3,}|>{3,}|#!|(?:import|from|def|class|return)\s|[\w.]+"
                  r"(?:\[[^\]]*\])?\s*=(?!=))")  # fmt: skip
CODE_STRING = re.compile(r"""^\W{0,3}[\w.]+(?:\[[^\]]*\])?\s*=\s*(["'])(.+)\1\W{0,2}$""")
WORD = re.compile(r"[^\W\d_]{2,}")  # a word of two letters or more, in any script
QUOTES = "\"'“”‘’`"


def parse_reply(text: str, request: str = "") -> list[str]:
    """The messages in a reply: a JSON list of strings (or objects with a text field) where
    there is one, else one message per numbered, bulleted or plain line. With the `request`
    text, what the teacher copied from it is left out: a small model often repeats the style
    list or the example prompts, or the whole request, and none of that is a new message."""
    found = _json_list(text)
    items = found if found is not None else _lines(text)
    asked = normalized(request)
    last = normalized(request.rstrip().rsplit("\n", 1)[-1]) if request else ""
    out = []
    for item in items:
        item = _clean(item)
        if not 2 <= len(item) <= 2000 or META.match(item) or not plausible(item):
            continue
        key = normalized(item)
        if asked and ((len(key) >= 12 and key in asked) or (last and last in key)):
            continue
        out.append(item)
    return out


def _json_list(text: str) -> list[str] | None:
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        data = orjson.loads(text[start : end + 1])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, list):
        return None
    out = []
    for x in data:
        if isinstance(x, dict):
            x = next((x[k] for k in ("message", "text", "prompt", "content") if k in x), None)
        if isinstance(x, str):
            out.append(x)
    return out or None


def _lines(text: str) -> list[str]:
    lines = [ln for ln in text.replace("\r", "").split("\n") if ln.strip()]
    bulleted = [ln for ln in lines if BULLET.match(ln)]
    if len(bulleted) >= 2:  # a numbered list: its items only, not the words around it
        return [BULLET.sub("", ln) for ln in bulleted]
    return lines


def plausible(item: str) -> bool:
    """Whether a cleaned line reads as a message: two words or more, not a heading that ends
    in a colon, not code or markup. "10", "Content:", "```python" and "<<<<" are not."""
    return len(WORD.findall(item)) >= 2 and not item.endswith(":") and not CODE.match(item)


def _clean(item: str) -> str:
    item = " ".join(item.split())
    quoted = CODE_STRING.match(item)
    if quoted:
        item = quoted.group(2)
    for _ in range(2):
        item = LABEL.sub("", item)
        item = STYLE_NOTE.sub("", item).strip().rstrip(",")
        if len(item) >= 2 and item[0] in QUOTES and item[-1] in QUOTES:
            item = item[1:-1].strip()
    return item


# --------------------------------------------------------------------------- the run


def replies_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.replies.jsonl")


def _fingerprint(cfg: PromptWriteConfig, persona: LoadedPersona) -> str:
    """What the replies depend on: a replies file made otherwise must not be mixed in."""
    parts = {
        "system_prompt": persona.persona.system_prompt,
        "description": persona.persona.description,
        "topics": cfg.topics,
        "per_request": cfg.per_request,
        "seed": cfg.seed,
        "model": cfg.teacher.model,
        "sampling": cfg.sampling.model_dump(mode="json"),
    }
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _read_replies(path: Path, fingerprint: str) -> dict[int, str]:
    replies: dict[int, str] = {}
    for r in read_jsonl(path):
        if r.get("config") != fingerprint:
            raise UserError(
                f"{path} holds replies asked with another persona, teacher, sampling, "
                "--topics, --per-request or --seed; delete it to start over, or pass "
                "another --out"
            )
        if isinstance(r.get("request"), int) and isinstance(r.get("content"), str):
            replies[r["request"]] = r["content"]
    return replies


def select(
    replies: dict[int, str], labels: Callable[[int], str], embed: Callable[[list[str]], Any],
    threshold: float, requests: Callable[[int], str] = lambda k: "",
) -> tuple[list[tuple[str, str]], dict[str, int]]:  # fmt: skip
    """(prompt, topic) pairs kept, in request order, and what was dropped; `requests(k)` is
    the text request k asked (what a reply copies from it is not a message)."""
    seen: set[str] = set()
    candidates: list[tuple[str, str]] = []
    counts = {"candidates": 0, "exact_duplicates": 0, "near_duplicates": 0}
    for k in sorted(replies):
        for text in parse_reply(replies[k], requests(k)):
            counts["candidates"] += 1
            key = normalized(text)
            if key in seen:
                counts["exact_duplicates"] += 1
                continue
            seen.add(key)
            candidates.append((text, labels(k)))
    if not candidates:
        return [], counts
    kept = keep_distinct(embed([t for t, _ in candidates]), threshold)
    counts["near_duplicates"] = len(candidates) - len(kept)
    return [candidates[i] for i in kept], counts


def write_prompts(
    cfg: PromptWriteConfig,
    persona: LoadedPersona,
    out: Path,
    console: Console,
    embed: Callable[[list[str]], Any],
    live: bool | None = None,
    log_every_s: float = 5.0,
) -> WriteSummary:
    """Ask the teacher for prompts until `cfg.n` distinct ones are kept; write them to `out`."""
    started = time.monotonic()
    say = lambda msg: console.print(msg, highlight=False, soft_wrap=True)  # noqa: E731
    topics = seeds(persona, cfg.topics, cfg.seed, out)
    if not topics:
        raise UserError(f"persona '{persona.name}': no categories or --topics to write about")
    fingerprint = _fingerprint(cfg, persona)
    path = replies_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    replies = _read_replies(path, fingerprint)
    before = len(replies)
    limit = cfg.max_requests or math.ceil(3 * cfg.n / cfg.per_request) + 2
    api_key = read_api_key(cfg.teacher) if cfg.teacher.base_url else None
    label = lambda k: topics[k % len(topics)].label  # noqa: E731

    def request(k: int) -> list[dict[str, str]]:
        return request_messages(persona, topics[k % len(topics)], k, cfg.per_request, cfg.seed)

    asked_text = lambda k: request(k)[-1]["content"]  # noqa: E731
    summary = WriteSummary(
        out=out, replies=path, requested=cfg.n, written=0, requests=before, asked_now=0,
        failed=0, candidates=0, exact_duplicates=0, near_duplicates=0,
    )  # fmt: skip
    kept, counts = select(replies, label, embed, cfg.threshold, asked_text) if replies else ([], {})
    endpoint: Endpoint | None = None
    while len(kept) < cfg.n and len(replies) < limit:
        # enough requests for what is missing, at the yield seen so far (a guess at first)
        per = len(kept) / len(replies) if replies and kept else cfg.per_request * 0.6
        want = min(limit, len(replies) + math.ceil((cfg.n - len(kept)) / max(per, 0.5) * 1.2))
        todo = [k for k in range(want) if k not in replies]
        if endpoint is None:
            endpoint = _endpoint(cfg, say)
        say(f"asking the teacher for {len(todo) * cfg.per_request} prompts "
            f"({len(todo)} requests; {len(kept)} of {cfg.n} kept so far)")  # fmt: skip
        jobs = [Job(str(k), request(k)) for k in todo]
        asked, failed, finished = _ask(
            cfg, jobs, endpoint, api_key, path, fingerprint, replies, console, live,
            log_every_s,
        )  # fmt: skip
        summary.asked_now += asked
        summary.failed += failed
        kept, counts = select(replies, label, embed, cfg.threshold, asked_text)
        if not finished:
            summary.interrupted = True
            break
        if asked == 0:  # every request failed for good: asking again will not help
            break
    summary.requests = len(replies)
    summary.prompts = [t for t, _ in kept[: cfg.n]]
    for k, v in counts.items():
        setattr(summary, k, v)
    if summary.prompts:
        lines = [orjson.dumps({"prompt": t, "topic": lb}) for t, lb in kept[: cfg.n]]
        atomic_write_bytes(out, b"".join(line + b"\n" for line in lines))
    summary.written = len(summary.prompts)
    summary.seconds = time.monotonic() - started
    return summary


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    base_url: str | None  # None: the embedded teacher, in process (`client`)
    model: str  # the name requests carry
    teacher: TeacherConfig  # with the local teacher's concurrency, if it is that
    client: ChatClient | None = None


def _endpoint(cfg: PromptWriteConfig, say: Any) -> Endpoint:
    """The configured endpoint, or the embedded teacher, loaded in this process."""
    t = cfg.teacher
    if t.base_url is not None:
        return Endpoint(base_url=t.base_url, model=t.model, teacher=t)
    from promptdistill.clients.in_process import load_in_process_teacher
    from promptdistill.sampling.sample import for_local_teacher

    local_cfg = for_local_teacher(SampleConfig(persona=cfg.persona, n=1, teacher=t), say)
    say(f"loading the local teacher ({t.model}) ...")
    client = load_in_process_teacher(t.model, local_cfg.teacher.concurrency, say)
    return Endpoint(base_url=None, model=t.model, teacher=local_cfg.teacher, client=client)


def _ask(
    cfg: PromptWriteConfig, jobs: list[Job], endpoint: Endpoint, api_key: str | None,
    path: Path, fingerprint: str, replies: dict[int, str], console: Console, live: bool | None,
    log_every_s: float,
) -> tuple[int, int, bool]:  # fmt: skip
    """Ask `jobs` through the engine; each reply is appended to `path` and `replies`.
    Returns (answered, failed for good, finished: not stopped by Ctrl-C)."""
    from promptdistill.sampling.sample import stopping

    t, s = endpoint.teacher, cfg.sampling
    base_url, model = endpoint.base_url, endpoint.model
    client = endpoint.client or Transport(base_url or "", api_key, t.concurrency, t.timeout_s)
    sent = {"base_url": redact_url(base_url) if base_url else client.public_url, "model": t.model}
    writer = JsonlWriter(path, fsync_every=64)
    failures: list[str] = []

    def body(job: Job) -> dict[str, Any]:
        return chat_body(model, job.messages, s.temperature, s.top_p, s.max_tokens,
                         None if s.seed is None else s.seed + int(job.id))  # fmt: skip

    def on_sample(job: Job, r: ChatResult, attempts: int) -> None:
        replies[int(job.id)] = r.content
        record = {"request": int(job.id), "config": fingerprint, "content": r.content}
        writer.write(
            {**record, "finish_reason": r.finish_reason, "usage": r.usage, "teacher": sent}
        )

    def on_failure(job: Job, error: str, *_: Any) -> None:
        failures.append(error)

    async def go() -> bool:
        stats = EngineStats(total=len(jobs))
        limits = Limits(t.concurrency, t.rpm, t.tpm)
        engine = Engine(
            client, limits, body, on_sample,
            on_failure, RetryPolicy(max_retries=t.max_retries), stats, s.max_tokens,
        )  # fmt: skip
        stop = asyncio.Event()
        async with (
            stopping(stop, True, None),
            engine.transport,
            Progress(stats, limits.concurrency, console, live=live, log_every_s=log_every_s),
        ):
            return await engine.run(iter(jobs), stop)

    before = len(replies)
    try:
        finished = asyncio.run(go())
    except FatalError as e:
        raise UserError(f"{e} [{len(replies)} replies kept in {path}]", exit_code=3) from None
    finally:
        writer.close()
    if failures:
        console.print(f"{len(failures)} requests failed for good; the last: {failures[-1]}")
    return len(replies) - before, len(failures), finished


def diversity(texts: list[str], embed: Callable[[list[str]], Any]) -> dict[str, float]:
    """distinct-2 and the mean pairwise cosine similarity of `texts` (diversity.py)."""
    return {
        "prompts": len(texts),
        "distinct_2": distinct_n(texts, 2),
        "mean_pairwise_cosine": mean_pairwise_cosine(embed(texts)) if texts else 0.0,
    }


def template_baseline(persona: LoadedPersona, n: int, seed: int) -> list[str]:
    """The first `n` prompts the persona's templates expand to (no sources): what the
    teacher-written prompts are measured against."""
    stream = iter_training_prompts(persona.prompt_sets, seed)
    return [p.text for _, p in zip(range(n), stream, strict=False)]
