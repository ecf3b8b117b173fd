"""The teacher's logprob of each token of the student's own answers, from an endpoint.

For `--objective onpolicy` with a remote teacher: each answer is sent back as the final
assistant message of its conversation (with the system prompt), `continue_final_message: true`,
`add_generation_prompt: false`, `prompt_logprobs: 1`, `max_tokens: 1`; vLLM returns the
logprob of every prompt token, and the answer's are the last ones (ANCHORS.md, vLLM chat
completions). The requests go through the sampling engine (sampling/engine.py): its limits,
retries and typed errors. Only the sampled token's logprob is known, so the loss is the
one-sample reverse-KL estimate (training/kl.py: `sampled_reverse_kl`).

The endpoint's tokens must be the student's: the answer's ids in `prompt_token_ids` are checked
against the student's tokenization, and a difference is a one-line error. The answer's end-of-turn
token is not scored (an unclosed final message has none), so it carries no weight here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptdistill.clients.endpoint import ChatResult, FatalError, Transport
from promptdistill.clients.keys import key_source, read_api_key
from promptdistill.core.config import TeacherConfig
from promptdistill.core.errors import UserError
from promptdistill.core.samples import SampleReader
from promptdistill.models.chat import Renderer
from promptdistill.sampling.engine import Engine, EngineStats, Job, RetryPolicy
from promptdistill.sampling.limits import Limits
from promptdistill.training.batching import Batch, TeacherTargets


class EndpointScorer:
    """Scores the student's answers with the run's teacher endpoint."""

    def __init__(self, teacher: TeacherConfig, renderer: Renderer, samples: Path) -> None:
        assert teacher.base_url is not None
        self.teacher, self.renderer = teacher, renderer
        self.api_key = read_api_key(teacher)
        # each prompt's conversation as the teacher answered it (system prompt included), up to
        # its first answer: the student's answer takes that place. The student answers the
        # first user turn (onpolicy.py: each example's prompt up to its first answer token),
        # also in a multi-turn conversation (`sample --turns K`), so only that turn is scored
        self.prompts: dict[str, list[dict[str, str]]] = {}
        for record in SampleReader(samples).records():
            messages = record.get("messages") or []
            first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
            if first:
                self.prompts[str(record.get("id"))] = messages[:first]
        self.forward_s = 0.0
        self._runner = asyncio.Runner()

    def targets(self, batch: Batch) -> TeacherTargets:
        import time

        t0 = time.perf_counter()
        jobs, answers = [], []
        for r, (tokens, weights) in enumerate(batch.examples):
            first = int(np.argmax(weights > 0))
            answer = [int(t) for t in tokens[first:] if int(t) not in self.renderer.stop_ids]
            prompt = self.prompts.get(batch.ids[r].removesuffix("#student"))
            if prompt is None:
                raise UserError(f"{batch.ids[r]}: its prompt is not in samples.jsonl")
            answer_text = {"role": "assistant", "content": self.renderer.decode(answer)}
            jobs.append(Job(id=str(r), messages=[*prompt, answer_text]))
            answers.append(answer)
        results = self._runner.run(self._score(jobs))
        token_logp_N = torch.zeros(len(batch.rows_N), dtype=torch.float32)
        weights_N = batch.weights_N
        rows_N, cols_N = batch.rows_N.tolist(), batch.cols_N.tolist()
        for n, (r, c) in enumerate(zip(rows_N, cols_N, strict=True)):
            tokens, weights = batch.examples[r]
            first = int(np.argmax(weights > 0))
            j = c + 1 - first  # the answer token this position predicts
            logps = self._answer_logprobs(results[r], answers[r])
            if j < len(logps):
                token_logp_N[n] = logps[j]
            else:  # the end-of-turn token: not scored, no weight
                weights_N[n] = 0.0
        batch.weight_sum = float(weights_N.sum())
        self.forward_s += time.perf_counter() - t0
        return TeacherTargets(token_logp_N=token_logp_N.to(weights_N.device))

    def _answer_logprobs(self, result: ChatResult, answer: list[int]) -> list[float]:
        ids, logprobs = result.prompt_token_ids or [], result.prompt_logprobs or []
        n = len(answer)
        if n and ids[-n:] != answer:
            raise UserError(
                f"the teacher at {self.teacher.base_url} tokenizes the student's answer as "
                f"{ids[-n:][:8]}... where the student has {answer[:8]}...: the teacher's tokens "
                "are not the student's, so its logprobs cannot be used; use a teacher of the "
                "student's family, or --teacher-model PATH"
            )
        out = []
        for pos, token in zip(range(len(ids) - n, len(ids)), answer, strict=True):
            entry = logprobs[pos] or {}
            value = entry.get(str(token)) or entry.get(token)
            if value is None:
                raise UserError(
                    f"the teacher at {self.teacher.base_url} returned no logprob for a prompt "
                    "token: it must return the logprob of every prompt token (vLLM's "
                    "`prompt_logprobs`)"
                )
            out.append(float(value["logprob"] if isinstance(value, dict) else value))
        return out

    async def _score(self, jobs: list[Job]) -> dict[int, ChatResult]:
        t = self.teacher
        results: dict[int, ChatResult] = {}
        failures: list[str] = []

        def body(job: Job) -> dict[str, Any]:
            return {
                "model": t.model, "messages": job.messages, "max_tokens": 1, "temperature": 0.0,
                "continue_final_message": True, "add_generation_prompt": False,
                "prompt_logprobs": 1,
            }  # fmt: skip

        def on_result(job: Job, result: ChatResult, _attempts: int) -> None:
            results[int(job.id)] = result

        def on_failure(job: Job, error: str, *_: Any) -> None:
            failures.append(error)

        engine = Engine(
            Transport(
                t.base_url or "", self.api_key, t.concurrency, t.timeout_s,
                key_source=key_source(t),
            ),
            Limits(t.concurrency, t.rpm, t.tpm), body, on_result, on_failure,
            RetryPolicy(max_retries=t.max_retries), EngineStats(total=len(jobs)), 1,
        )  # fmt: skip
        try:
            async with engine.transport:
                await engine.run(iter(jobs))
        except FatalError as e:
            raise UserError(f"scoring the student's answers: {e}") from None
        if failures:
            raise UserError(f"the teacher could not score a student answer: {failures[0]}")
        return results

    def close(self) -> None:
        self._runner.close()
