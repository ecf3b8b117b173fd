"""Sampling through batches instead of online requests (issue #15): `sample_run(batches=...)`.

`sample_run` (sample.py) prepares the run as always (the checks, the prompts still without an
answer, the recorded configuration) and then hands it here. This module gives the batch modules
what online sampling uses, so nothing is built twice: the request builder, the records that
write samples.jsonl and failures.jsonl, Ctrl-C handling, and the online engine itself for
`--batch-fallback online`.

    batch_runner(BatchAction("write", F))   sample --write-batch-file F   (batch_file.py)
    batch_runner(BatchAction("read", F))    sample --read-batch-file F
    batch_runner(BatchAction("cancel"))     sample --cancel-batches        (batch_api.py)
    batch_runner(None)                      sample --batch-api
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from promptdistill.clients.endpoint import ChatResult
from promptdistill.core.errors import UserError
from promptdistill.personas import teacher_system
from promptdistill.sampling.batch_api import cancel_batches, sample_batches
from promptdistill.sampling.batch_file import read_batch_file, write_batch_file
from promptdistill.sampling.batch_lines import BatchWork, Prepared
from promptdistill.sampling.correct import graded
from promptdistill.sampling.engine import Job
from promptdistill.sampling.records import SampleRecords
from promptdistill.sampling.requests import prompt_job, request_body, teacher_record
from promptdistill.sampling.sample import _sample_async, stopping


@dataclass(frozen=True)
class BatchAction:
    """A one-off batch command instead of sampling: write a batch file, read a results file,
    or cancel the run's batches."""

    kind: Literal["write", "read", "cancel"]
    path: Path | None = None


def batch_runner(action: BatchAction | None) -> Callable[[Prepared], None]:
    """What `sample_run(batches=...)` calls: `action`, or sampling through the Batch API."""

    def run(prepared: Prepared) -> None:
        if prepared.config.turns > 1:  # each next user turn needs the answer before it
            raise UserError(
                f"--turns {prepared.config.turns}: a conversation's next turn is written from "
                "the teacher's answer, so it cannot be asked in a batch; sample it online"
            )
        config = prepared.config
        grading = config.keep == "correct" or config.attempts > 1  # cli/batch.py checks first
        if grading and (action is None or action.kind != "cancel"):
            raise UserError(
                f"keep: {config.keep}, attempts: {config.attempts}: a batch's answers all arrive "
                "at its end, so no wrong one is asked again; sample online"
            )
        work = batch_work(prepared)
        if action is None:
            sample_batches(work)
        elif action.kind == "write" and action.path is not None:
            write_batch_file(work, action.path)
        elif action.kind == "read" and action.path is not None:
            read_batch_file(work, action.path)
        else:
            cancel_batches(work)

    return run


def batch_work(p: Prepared) -> BatchWork:
    """The prepared run, with the request builder, records and online engine of sample.py."""
    config, summary = p.config, p.summary
    base, model = config.teacher.base_url, config.teacher.model

    async def online(jobs: list[Job], stop_now: asyncio.Event) -> None:
        """Ask `jobs` online (`--batch-fallback online`) until `stop_now` is set."""
        assert base is not None
        ids = {j.id for j in jobs}
        kept = (summary.answered_now, summary.failed, summary.truncated)
        flag = threading.Event()  # what _sample_async polls (it may run in another thread)
        bridge = asyncio.create_task(_set_when(stop_now, flag))
        try:
            await _sample_async(
                config, p.run, [(q, 0) for q in p.todo if q.id in ids], p.persona, base, None,
                model, p.api_key, summary, p.console, p.live, p.log_every_s, False, flag,
            )  # fmt: skip
        finally:
            bridge.cancel()
            summary.answered_now += kept[0]
            summary.failed += kept[1]
            summary.truncated += kept[2]

    system_prompt = p.persona.persona.system_prompt
    # a batch line asks what an online request asks: teacher instructions included (#17)
    jobs = [prompt_job(q, teacher_system(p.persona, q.prompt_set)) for q in p.todo]
    return BatchWork(
        config=config, run=p.run, jobs=jobs,
        done_ids=p.done_ids, body=request_body(config, model),
        open_records=lambda: GradedRecords(
            SampleRecords(p.run, teacher_record(config, summary.base_url), system_prompt),
            config.answer_pattern,
        ),
        online=online, summary=summary, console=p.console, say=p.say, api_key=p.api_key,
        live=p.live, log_every_s=p.log_every_s,
        stopping=lambda event: stopping(event, p.handle_sigint, p.stop, summary),
    )  # fmt: skip


async def _set_when(event: asyncio.Event, flag: threading.Event) -> None:
    await event.wait()
    flag.set()


class GradedRecords:
    """samples.jsonl and failures.jsonl for a batch's answers, each graded first where its
    prompt has a gold answer: a batch answer carries `correct` and `final_answer` as an online
    one does, so eval and the summary's accuracy read both alike (issue #17)."""

    def __init__(self, records: SampleRecords, pattern: str) -> None:
        self.records, self.pattern = records, pattern

    def on_sample(self, job: Job, r: ChatResult, attempts: int) -> None:
        self.records.on_sample(graded(job, r.content, self.pattern), r, attempts)

    def on_failure(self, job: Job, error: str, kind: str, status: int | None, tries: int) -> None:
        self.records.on_failure(job, error, kind, status, tries)

    def close(self) -> None:
        self.records.close()
