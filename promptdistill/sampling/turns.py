"""Multi-turn conversations: `sample --turns K` (issue #14).

After the teacher's answer, the teacher again, given a short user-simulator prompt instead of
the persona's, writes the next user message; the teacher (with the persona's system prompt)
answers it; and so on up to K user turns. Each request goes through the sampling engine (its
limits, retries, progress): `Conversations.on_sample` returns the conversation's next request,
which the same worker asks at once (engine.py), and the conversation is written to
samples.jsonl only when it is complete. A conversation cut short by Ctrl-C is asked again, from
its first turn, by the next run; one whose simulator has nothing to say ends early, and its
record says how many turns it has.

The simulator sees the conversation as a transcript, not as chat turns with the roles swapped:
a small teacher then keeps to the user's side (it otherwise answers its own question).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from promptdistill.clients.endpoint import ChatResult
from promptdistill.sampling.engine import Job

SIMULATOR_PROMPT = (
    "You write the next message of the USER in a conversation between a user and {who}. "
    "Write one short, natural message that a real user would send next: a follow-up "
    "question, a request for more detail or an example, a disagreement, or a related new "
    "question. Vary it; do not thank or say goodbye. Write only the message itself: no "
    "quotes, no 'User:' label, no explanation."
)
SIMULATOR_MAX_TOKENS = 96
LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:user|the user|next message|message)(?:\*\*)?\s*:(?:\*\*)?\s*", re.I
)
# where a simulator that went on to write the assistant's side too starts doing so
OTHER_SIDE = re.compile(r"\n\s*(?:\*\*)?(?:assistant|ai)(?:\*\*)?\s*:|(?-i:\sAssistant:)", re.I)


def simulator_messages(who: str, convo: list[dict[str, str]]) -> list[dict[str, str]]:
    """The request that asks for the next user turn of `convo` (system messages left out)."""
    lines = [
        f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content'].strip()}"
        for m in convo
        if m["role"] != "system"
    ]
    transcript = "\n\n".join(lines)
    return [
        {"role": "system", "content": SIMULATOR_PROMPT.format(who=who)},
        {
            "role": "user",
            "content": f"The conversation so far:\n\n{transcript}\n\n"
            "Write the user's next message.",
        },
    ]


def clean_user_turn(text: str) -> str:
    """The simulator's reply as a user message: no label, no quotes, no answer of its own."""
    text = text.strip()
    text = OTHER_SIDE.split(text, maxsplit=1)[0]
    text = LABEL.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    if text[:1] == "“" and text[-1:] == "”":
        text = text[1:-1].strip()
    return text


@dataclass
class _Open:
    """A conversation in progress."""

    first: Job
    messages: list[dict[str, str]]
    turn: int = 1  # user turns so far
    attempts: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    simulator_usage: dict[str, int] = field(default_factory=dict)
    finish_reasons: list[str | None] = field(default_factory=list)
    latency_s: float = 0.0
    last: ChatResult | None = None  # the teacher's latest answer


def _add(total: dict[str, int], usage: dict[str, Any]) -> None:
    for k, v in usage.items():
        if isinstance(v, int):
            total[k] = total.get(k, 0) + v


class Conversations:
    """Drives each job through `turns` user turns; `write` gets each finished conversation."""

    def __init__(
        self,
        turns: int,
        who: str,
        write: Callable[[Job, ChatResult, int, dict[str, Any]], None],
        fail: Callable[[Job, str, str, int | None, int], None],
        simulator_max_tokens: int = SIMULATOR_MAX_TOKENS,
    ) -> None:
        self.turns, self.who, self.write, self.fail = turns, who, write, fail
        self.simulator_max_tokens = simulator_max_tokens
        self._open: dict[str, _Open] = {}
        self._simulating: set[int] = set()  # id() of the simulator jobs in flight

    def on_sample(self, job: Job, result: ChatResult, attempts: int) -> Job | None:
        state = self._open.get(job.id)
        if state is None:  # the first answer of a conversation
            state = self._open[job.id] = _Open(first=job, messages=list(job.messages))
            state.latency_s = result.latency_s or 0.0  # always measured online
        state.attempts += attempts
        if id(job) in self._simulating:
            self._simulating.discard(id(job))
            _add(state.simulator_usage, result.usage)
            text = clean_user_turn(result.content)
            if not text:  # nothing to ask: the conversation ends here
                self._finish(state, result)
                return None
            state.messages.append({"role": "user", "content": text})
            state.turn += 1
            return Job(state.first.id, list(state.messages), state.first.meta)
        _add(state.usage, result.usage)
        state.finish_reasons.append(result.finish_reason)
        state.messages.append({"role": "assistant", "content": result.content})
        state.last = result
        if state.turn >= self.turns:
            self._finish(state, result)
            return None
        ask = Job(
            state.first.id,
            simulator_messages(self.who, state.messages),
            state.first.meta,
            max_tokens=self.simulator_max_tokens,
        )
        self._simulating.add(id(ask))
        return ask

    def _finish(self, state: _Open, result: ChatResult) -> None:
        del self._open[state.first.id]
        last = state.last or result
        extra = {
            "messages": state.messages,
            "turns": state.turn,
            "usage": state.usage,
            "simulator_usage": state.simulator_usage,
            "finish_reasons": state.finish_reasons,
            "latency_s": state.latency_s,  # the first answer's, as for one-turn samples
            "attempts": state.attempts,
        }
        self.write(state.first, last, state.attempts, extra)

    def on_failure(self, job: Job, error: str, kind: str, status: int | None, tries: int) -> None:
        state = self._open.pop(job.id, None)
        simulating = id(job) in self._simulating
        self._simulating.discard(id(job))
        if state is not None:
            n = f"{state.turn} of {self.turns}"
            where = f"the user simulator, after turn {n}" if simulating else f"turn {n}"
            error = f"{error} (at {where})"
            job = state.first
        self.fail(job, error, kind, status, tries)
