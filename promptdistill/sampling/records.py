"""What online sampling and the batch paths write per answer: RUN/samples.jsonl and
RUN/failures.jsonl (moved out of sample.py to keep it one concept; issue #17 added a system
prompt per prompt set)."""

from __future__ import annotations

import time
from typing import Any

from promptdistill.clients.endpoint import ChatResult
from promptdistill.core.io import JsonlWriter
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SYSTEM_KEY, store_system_prompt
from promptdistill.sampling.engine import Job


class SampleRecords:
    """Writes each answer to samples.jsonl and each failure for good to failures.jsonl.

    Every line goes to the OS as it is written (kill -9 loses nothing); an fsync (for power
    cuts) blocks the event loop for ~10 ms, so samples are fsynced every 1024 only. The system
    prompt is stored once (core/samples.py), so a record holds only its key; with prompt-set
    teacher instructions (issue #17) there is one such prompt per prompt set."""

    def __init__(self, run: RunDir, teacher_info: dict[str, Any], system_prompt: str) -> None:
        self.teacher_info = teacher_info
        self.run = run
        self.keys = {system_prompt: store_system_prompt(run.samples, system_prompt)}
        self.samples = JsonlWriter(run.samples, fsync_every=1024)
        try:
            self.failures = JsonlWriter(run.failures)
        except BaseException:
            self.samples.close()
            raise
        self.last_answer = time.monotonic()
        self.written = 0  # samples on disk now (a failed write is not one)

    def key(self, job: Job) -> str:
        """The stored system prompt's key of the prompt `job` sent."""
        system = next(m["content"] for m in job.messages if m["role"] == "system")
        if system not in self.keys:
            self.keys[system] = store_system_prompt(self.run.samples, system)
        return self.keys[system]

    def on_sample(self, job: Job, r: ChatResult, attempts: int) -> None:
        asked = [m for m in job.messages if m["role"] != "system"]
        messages = [*asked, {"role": "assistant", "content": r.content}]
        self._write(job, r, attempts, messages=messages, usage=r.usage, latency_s=r.latency_s)

    def on_conversation(
        self, job: Job, r: ChatResult, attempts: int, convo: dict[str, Any]
    ) -> None:
        """A finished multi-turn conversation (turns.py): `r` is the teacher's last answer."""
        self._write(
            job,
            r,
            attempts,
            messages=[m for m in convo["messages"] if m["role"] != "system"],
            usage=convo["usage"],
            latency_s=convo["latency_s"],
            turns={k: convo[k] for k in ("turns", "finish_reasons", "simulator_usage")},
        )

    def _write(
        self,
        job: Job,
        r: ChatResult,
        attempts: int,
        *,
        messages: list[dict[str, str]],
        usage: dict[str, Any],
        latency_s: float | None,
        turns: dict[str, Any] | None = None,
    ) -> None:
        self.last_answer = time.monotonic()
        self.samples.write(
            {
                "id": job.id,
                **job.meta,
                SYSTEM_KEY: self.key(job),
                "messages": messages,
                "finish_reason": r.finish_reason,
                "truncated": r.finish_reason == "length",
                "usage": usage,
                "latency_s": None if latency_s is None else round(latency_s, 4),
                "attempts": attempts,
                "teacher": self.teacher_info,
                **(turns or {}),
                **({"logprobs": r.logprobs} if r.logprobs is not None else {}),
            }
        )
        self.written += 1

    def on_failure(self, job: Job, error: str, kind: str, status: int | None, tries: int) -> None:
        self.failures.write(
            {
                "id": job.id,
                **job.meta,
                "prompt": job.messages[-1]["content"],
                "error": error,
                "kind": kind,
                "status": status,
                "attempts": tries,
                "teacher": self.teacher_info,
            }
        )

    def close(self) -> None:
        try:
            self.samples.close()
        finally:
            self.failures.close()
