"""Rejection sampling on gold answers: `sample --keep correct --attempts K` (issue #17).

Chain-of-thought distillation keeps only the teacher traces whose final answer is right (STaR,
Zelikman et al. 2022, arXiv 2203.14465; the DeepSeek-R1 distillation data, arXiv 2501.12948).
For every prompt with a gold answer, the teacher's answer is graded with eval's own extractor
(core/answers.py, `--answer-pattern`, "Final Answer: N" by default) and its record in
samples.jsonl says so: `correct`, `final_answer`. Every answer is kept there; the datums leave
out the wrong ones (datums/build.py, under `keep: correct`).

With `--keep correct`, a training prompt whose answers so far are all wrong is asked again, up
to K attempts in all, each with its own seed (`attempt` k > 0: the sampling seed + k, or k when
none is set), through the same engine, limits and retries as every other request. Held-out
prompts are asked once: their answers measure the teacher, and best-of-K would flatter it.

Bookkeeping is by (prompt id, attempt): samples.jsonl is the ledger. A rerun asks each prompt's
next attempt only if no recorded one is right and fewer than K are recorded, so an interrupted
run resumes without asking any attempt twice. Within a run, a retry is queued the moment a
wrong answer arrives and runs in the same pass; the few that arrive as the pass drains run in
one more pass.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from rich.table import Table

from promptdistill.clients.endpoint import ChatResult
from promptdistill.core.answers import answers_match, extract_final_answer
from promptdistill.core.config import SampleConfig
from promptdistill.core.errors import UserError
from promptdistill.sampling.engine import EngineStats, Job


def check_keep(config: SampleConfig) -> None:
    """--keep correct, --attempts and --answer-pattern, checked before any work (issue #17)."""
    try:
        re.compile(config.answer_pattern)
    except re.error as e:
        raise UserError(
            f"--answer-pattern {config.answer_pattern!r} is not a valid regex: {e}"
        ) from None
    if config.attempts > 1 and config.keep != "correct":
        raise UserError(
            f"--attempts {config.attempts} asks again only for a correct answer: pass "
            "--keep correct with it"
        )
    if config.keep == "correct" and config.turns > 1:
        raise UserError(
            "--keep correct grades one answer per prompt against its gold answer: use it "
            "with --turns 1"
        )


def attempt_seed(seed: int | None, attempt: int) -> int | None:
    """The sampling seed of attempt k: the configured one for the first, then a new one each."""
    if attempt == 0:
        return seed
    return (seed or 0) + attempt


def grade(answer: str, gold: str, pattern: str) -> dict[str, Any]:
    """The record fields of a graded answer."""
    extracted = extract_final_answer(answer, pattern)
    return {"final_answer": extracted, "correct": answers_match(extracted, gold)}


def graded(job: Job, answer: str, pattern: str) -> Job:
    """`job` with its answer's grade in its meta (`correct`, `final_answer`), where its prompt
    has a gold answer: what the answer's record in samples.jsonl carries."""
    gold = job.meta.get("gold")
    if gold is None:
        return job
    return replace(job, meta={**job.meta, **grade(answer, str(gold), pattern)})


def retries_wanted(config: SampleConfig) -> bool:
    return config.keep == "correct" and config.attempts > 1


@dataclass
class PromptState:
    """What samples.jsonl says about one prompt."""

    attempts: set[int] = field(default_factory=set)
    correct_at: int | None = None  # the first attempt whose answer was right


def prompt_states(records: Iterable[dict[str, Any]], ids: set[str]) -> dict[str, PromptState]:
    states: dict[str, PromptState] = {}
    for r in records:
        rid = r.get("id")
        if rid not in ids or not r.get("messages"):
            continue
        st = states.setdefault(str(rid), PromptState())
        k = int(r.get("attempt") or 0)
        st.attempts.add(k)
        if r.get("correct") is True and (st.correct_at is None or k < st.correct_at):
            st.correct_at = k
    return states


def next_attempt(state: PromptState | None, config: SampleConfig, gold: Any, split: str) -> int:
    """The attempt to ask for this prompt now, or -1 when it needs none."""
    if state is None or not state.attempts:
        return 0
    if split != "train" or gold is None or not retries_wanted(config):
        return -1
    if state.correct_at is not None or len(state.attempts) >= config.attempts:
        return -1
    return max(state.attempts) + 1


class Attempts:
    """The jobs of one sampling run, first attempts and retries, and the grading of answers.

    `feed` is the iterator the engine's workers share (a class, not a generator: a pass ends
    when it is empty, and it can be iterated again for the next pass). `on_sample` grades an
    answer, writes it (`write`), and queues the prompt's next attempt when it was wrong."""

    def __init__(
        self,
        config: SampleConfig,
        jobs: Iterable[Job],
        write: Callable[[Job, ChatResult, int], Job | None],
        stats: EngineStats,
    ) -> None:
        self.config, self.write, self.stats = config, write, stats
        self._jobs: Iterator[Job] = iter(jobs)
        self._retries: deque[Job] = deque()
        self.reasked = 0  # retries of wrong answers sent in this run
        self.reanswered = 0  # ... and answered

    def __iter__(self) -> Attempts:
        return self

    def __next__(self) -> Job:
        job = self._retries.popleft() if self._retries else next(self._jobs)
        if job.meta.get("attempt"):
            self.reasked += 1
        return job

    @property
    def has_retries(self) -> bool:
        return bool(self._retries)

    def queue(self, job: Job) -> None:
        self._retries.append(job)
        self.stats.total += 1

    def on_sample(self, job: Job, result: ChatResult, tries: int) -> Job | None:
        attempt = int(job.meta.get("attempt") or 0)
        job = graded(job, result.content, self.config.answer_pattern)  # no gold: no grade
        follow = self.write(job, result, tries)
        if attempt:
            self.reanswered += 1
        wrong = job.meta.get("correct") is False
        more = retries_wanted(self.config) and attempt + 1 < self.config.attempts
        if wrong and more and job.meta.get("split") == "train":
            self.queue(retry_job(job, attempt + 1, self.config.sampling.seed))
        return follow


def retry_job(job: Job, attempt: int, seed: int | None) -> Job:
    """The job of a prompt's attempt k: the same messages, its own seed."""
    meta = {k: v for k, v in job.meta.items() if k not in ("correct", "final_answer")}
    return Job(
        job.id, job.messages, {**meta, "attempt": attempt, "seed": attempt_seed(seed, attempt)}
    )


# --------------------------------------------------------------------------- the summary


@dataclass(kw_only=True)
class Correctness:
    """The teacher's accuracy on prompts with gold answers, over the whole samples.jsonl."""

    keep: str
    attempts_allowed: int
    prompts_with_gold: int = 0
    first_graded: int = 0  # prompts whose first answer was graded
    first_correct: int = 0
    answers_graded: int = 0  # every graded answer, retries included
    answers_correct: int = 0
    train_with_gold: int = 0
    kept: int = 0  # training prompts with a right answer
    attempts_to_kept: list[int] = field(default_factory=list)  # attempts each kept one took
    no_correct: int = 0  # training prompts asked K times (or once, keep all), none right
    still_open: int = 0  # training prompts with attempts left (an interrupted run)

    @property
    def accuracy(self) -> float | None:
        return self.first_correct / self.first_graded if self.first_graded else None

    @property
    def attempts_per_kept(self) -> float | None:
        kept = self.attempts_to_kept
        return sum(kept) / len(kept) if kept else None


def correctness(
    records: Iterable[dict[str, Any]], config: SampleConfig, wanted: dict[str, Any]
) -> Correctness:
    """`wanted`: id -> (split, gold) of this run's prompts."""
    out = Correctness(keep=config.keep, attempts_allowed=config.attempts)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("id") in wanted and r.get("messages") and isinstance(r.get("correct"), bool):
            by_id.setdefault(str(r["id"]), []).append(r)
    for pid, (split, gold) in wanted.items():
        if gold is None:
            continue
        out.prompts_with_gold += 1
        mine = sorted(by_id.get(pid, []), key=lambda r: int(r.get("attempt") or 0))
        out.answers_graded += len(mine)
        out.answers_correct += sum(r["correct"] for r in mine)
        if mine and int(mine[0].get("attempt") or 0) == 0:
            out.first_graded += 1
            out.first_correct += bool(mine[0]["correct"])
        if split != "train":
            continue
        out.train_with_gold += 1
        right = [int(r.get("attempt") or 0) for r in mine if r["correct"]]
        if right:
            out.kept += 1
            out.attempts_to_kept.append(min(right) + 1)
        elif mine:
            limit = config.attempts if retries_wanted(config) else 1
            if len(mine) >= limit:
                out.no_correct += 1
            else:
                out.still_open += 1
    return out


def add_rows(table: Table, c: Correctness) -> None:
    """The summary table's rows for a prompt set with gold answers."""
    if not c.prompts_with_gold:
        return
    acc = c.accuracy
    table.add_row(
        "teacher accuracy, first answers",
        "—" if acc is None else f"{acc:.1%} of {c.first_graded}",
    )
    if c.answers_graded > c.first_graded:
        table.add_row(
            "teacher accuracy, every attempt",
            f"{c.answers_correct / c.answers_graded:.1%} of {c.answers_graded}",
        )
    kept = "kept (right)" if c.keep == "correct" else "right (all train)"
    table.add_row(f"training prompts {kept}", f"{c.kept} of {c.train_with_gold}")
    per = c.attempts_per_kept
    if per is not None:
        table.add_row("attempts per kept sample", f"{per:.2f} (up to {c.attempts_allowed})")
    table.add_row("prompts with no correct answer", str(c.no_correct))
    if c.still_open:
        table.add_row("prompts with attempts left", str(c.still_open))
