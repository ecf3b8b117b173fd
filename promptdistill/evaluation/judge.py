"""LLM judge: rate each answer 1-10 for staying in character, blind to who wrote it.

Blindness is structural: the request holds only the persona's *description*, the user's prompt
and one answer. It never holds a model name, a label, an id or a second answer, and the order in
which answers from the three models (teacher, student, base) are sent is shuffled with a seed,
so neither the content nor the arrival order of requests tells the judge who wrote what
(position and self-preference biases of LLM judges: Zheng et al. 2023, arXiv 2306.05685).

A reply without a clear score is asked again a bounded number of times (with a little
temperature, so a deterministic judge can answer differently), then recorded as *missing* with
the reason. A score is never invented, and missing scores are left out of the means.

HTTP goes through the issue #3 transport (one aiohttp session, typed errors); transient errors
(429, 5xx, timeouts) are retried with backoff, honouring retry-after.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from promptdistill.clients.endpoint import (
    FatalError,
    PromptError,
    RetryableError,
    Transport,
    chat_body,
)
from promptdistill.core.config import JudgeConfig
from promptdistill.core.errors import UserError
from promptdistill.evaluation.metrics import MeanCI, mean_ci

JUDGE_SYSTEM = (
    "You are an impartial evaluator of role-play. You rate how well a reply stays in character "
    "as a described persona. You answer with a single line of the form 'Score: N'."
)

JUDGE_TEMPLATE = """Persona: {description}

A user wrote:
<<<
{prompt}
>>>

Reply to rate:
<<<
{answer}
>>>

How well does the reply stay in character as the persona described above (its voice, manner, \
knowledge and rules)? 1 means not at all in character, 10 means perfectly in character. Judge \
only whether it is in character, not its length. Answer with exactly one line: "Score: N", \
where N is a whole number from 1 to 10."""


# --------------------------------------------------------------------------- parsing

_SCORE_LABELLED = re.compile(
    r"\b(?:score|rating|rate|grade)\b\s*(?:is|of|=|:)?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10\b)?",
    re.IGNORECASE,
)
_SCORE_OUT_OF = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.IGNORECASE)
_SCORE_BARE = re.compile(r"^\W*(\d+(?:\.\d+)?)\W*$")


def parse_score(reply: str) -> float | None:
    """The 1-10 score in a judge's reply, or None when there is none or it is ambiguous.

    Accepted, in order: a labelled score ("Score: 7", "**Rating**: 8/10"; the last one wins, as
    judges often reason first), "N/10" or "N out of 10" (all occurrences must agree), or a reply
    that is just a number. Out-of-range values are rejected, never clipped.
    """
    text = reply.replace("*", "")
    labelled = _SCORE_LABELLED.findall(text)
    if labelled:
        candidates = [float(labelled[-1])]
    else:
        out_of = {float(v) for v in _SCORE_OUT_OF.findall(text)}
        if len(out_of) > 1:
            return None
        if out_of:
            candidates = list(out_of)
        else:
            bare = _SCORE_BARE.match(text.strip())
            candidates = [float(bare.group(1))] if bare else []
    if not candidates:
        return None
    score = candidates[0]
    return score if 1.0 <= score <= 10.0 else None


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class JudgeItem:
    """One answer to rate. `model` stays on this side of the wire: it is never sent."""

    model: str
    prompt_id: str
    prompt: str
    answer: str


@dataclass
class JudgeScore:
    item: JudgeItem
    score: float | None
    attempts: int
    reason: str | None = None  # why the score is missing
    replies: list[str] = field(default_factory=list)  # raw judge replies, for the report


def judge_messages(description: str, prompt: str, answer: str) -> list[dict[str, str]]:
    user = JUDGE_TEMPLATE.format(description=description.strip(), prompt=prompt, answer=answer)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def shuffled(items: list[JudgeItem], seed: int) -> list[JudgeItem]:
    """A seeded permutation, so the judge sees no run of answers from the same model."""
    order = list(items)
    random.Random(f"judge:{seed}").shuffle(order)
    return order


class _Breaker:
    """Stops the judge when the endpoint cannot be reached at all: without it, every answer
    would sit through its own retries (minutes for a few hundred answers) for nothing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.unreachable_in_a_row = 0

    def failed(self, e: RetryableError, where: str) -> None:
        if e.kind != "unreachable":
            return
        self.unreachable_in_a_row += 1
        if self.unreachable_in_a_row >= self.limit:
            raise FatalError(f"the judge endpoint {where} is unreachable ({e})")

    def reached(self) -> None:
        self.unreachable_in_a_row = 0


async def _one(
    transport: Transport,
    item: JudgeItem,
    description: str,
    cfg: JudgeConfig,
    model: str,
    breaker: _Breaker,
) -> JudgeScore:
    messages = judge_messages(description, item.prompt, item.answer)
    result = JudgeScore(item, None, 0)
    malformed = 0
    http_failures = 0
    while True:
        # first ask deterministically; after a malformed reply, add temperature so a greedy
        # judge does not repeat itself
        temperature = 0.0 if malformed == 0 else cfg.retry_temperature
        body = chat_body(model, messages, temperature, 1.0, cfg.max_tokens, cfg.seed + malformed)
        result.attempts += 1
        try:
            reply = await transport.chat(body)
        except RetryableError as e:
            breaker.failed(e, transport.public_url)
            http_failures += 1
            if http_failures > cfg.http_retries:
                result.reason = f"endpoint error after {http_failures} tries: {e}"
                return result
            wait = e.retry_after if e.retry_after is not None else min(0.5 * 2**http_failures, 8)
            await asyncio.sleep(wait)
            continue
        except PromptError as e:
            result.reason = f"endpoint refused the request: {e}"
            return result
        breaker.reached()
        result.replies.append(reply.content[:500])
        score = parse_score(reply.content)
        if score is not None:
            result.score = score
            return result
        malformed += 1
        if malformed > cfg.max_retries:
            result.reason = f"no score in {malformed} replies"
            return result


async def judge_async(
    items: list[JudgeItem],
    description: str,
    cfg: JudgeConfig,
    base_url: str,
    model: str,
    api_key: str | None,
) -> list[JudgeScore]:
    """Score every item, in a seeded shuffled order; results come back in the input order."""
    order = shuffled(items, cfg.seed)
    sem = asyncio.Semaphore(cfg.concurrency)
    breaker = _Breaker(limit=2 * cfg.concurrency)
    async with Transport(base_url, api_key, cfg.concurrency, cfg.timeout_s) as transport:

        async def run(item: JudgeItem) -> JudgeScore:
            async with sem:
                return await _one(transport, item, description, cfg, model, breaker)

        # tasks are created (and so start) in the shuffled order
        tasks = [asyncio.ensure_future(run(it)) for it in order]
        try:
            done = await asyncio.gather(*tasks)
        except FatalError as e:
            for t in tasks:
                t.cancel()
            raise UserError(f"judge: {e}; or pass --no-judge") from None
    by_item = {id(s.item): s for s in done}
    return [by_item[id(it)] for it in items]


def run_judge(
    items: list[JudgeItem],
    description: str,
    cfg: JudgeConfig,
    base_url: str,
    model: str,
    api_key: str | None,
) -> list[JudgeScore]:
    return asyncio.run(judge_async(items, description, cfg, base_url, model, api_key))


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class JudgeSummary:
    model: str
    stats: MeanCI
    missing: int
    histogram: dict[int, int]  # rounded score -> count

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            **self.stats.as_dict(),
            "missing": self.missing,
            "histogram": {str(k): v for k, v in sorted(self.histogram.items())},
        }


def summarize(scores: list[JudgeScore]) -> dict[str, JudgeSummary]:
    """Per model: mean with a 95% Student-t interval over the present scores, and the misses."""
    models = list(dict.fromkeys(s.item.model for s in scores))
    out = {}
    for m in models:
        mine = [s for s in scores if s.item.model == m]
        present = [s.score for s in mine if s.score is not None]
        hist = Counter(int(round(v)) for v in present)
        out[m] = JudgeSummary(m, mean_ci(present), len(mine) - len(present), dict(hist))
    return out
