"""What a prompt becomes: the job the engine asks, the request body it sends, and the teacher
record each sample keeps. One builder for online sampling and batch files alike (issue #15: a
batch line's body is exactly the request online sampling sends).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from promptdistill.clients.endpoint import chat_body
from promptdistill.core.config import SampleConfig
from promptdistill.personas import UserPrompt
from promptdistill.sampling.engine import Job


def request_body(config: SampleConfig, model: str) -> Callable[[Job], dict[str, Any]]:
    """The one request builder: what online sampling sends, and what a batch file holds."""
    s = config.sampling

    def body(job: Job) -> dict[str, Any]:
        max_tokens = job.max_tokens or s.max_tokens  # the user simulator's turns are short
        seed = job.meta["seed"] if "attempt" in job.meta else s.seed  # a retry's own (#17)
        out = chat_body(model, job.messages, s.temperature, s.top_p, max_tokens, seed)
        if config.logprobs and job.max_tokens is None:
            out |= {"logprobs": True, "top_logprobs": config.logprobs}
        return out

    return body


def teacher_record(config: SampleConfig, base_url: str) -> dict[str, Any]:
    """What each sample records about its teacher (never a key: the URL is redacted)."""
    return {
        "base_url": base_url,
        "model": config.teacher.model,  # the local teacher's `model` is a cache path
        "sampling": config.sampling.model_dump(mode="json"),
    }


def prompt_job(p: UserPrompt, system_prompt: str) -> Job:
    """The job that asks one prompt; its split, set and category go into the sample."""
    meta: dict[str, Any] = {"split": p.split, "prompt_set": p.prompt_set, "category": p.category}
    if p.gold is not None:
        meta["gold"] = p.gold
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": p.text}]
    return Job(p.id, messages, meta)
