"""`sample --batch-api`: the run's prompts through the Batch API (issue #15).

    1. resume: the batches RUN/batches.json records and has not merged are polled, not
       submitted again (an upload recorded without its batch: the batch is looked up by its
       input file, else created);
    2. submit the other unanswered prompts: input files of at most 50,000 requests / 200 MB,
       each request exactly what online sampling sends; upload, create, and record both ids
       (batch_state.py) before waiting;
    3. poll every open batch, the interval growing 1.5x per poll up to a cap, until it ends;
       then download its output and error files and merge them (batch_lines.py: each answer
       checked as online, one sample per prompt, in any order);
    4. lines that failed (5xx, empty, malformed) or that an expired or cancelled batch did not
       answer go into a follow-up batch, up to `rounds` times, or online (`--batch-fallback
       online`); a 4xx is a failure for good (failures.jsonl), as online.

Ctrl-C (or SIGTERM) stops polling and leaves the batches running; rerunning the command
collects them, `--cancel-batches` cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from promptdistill.clients.batches import BatchClient, BatchUnavailable
from promptdistill.clients.keys import key_source
from promptdistill.core.errors import UserError
from promptdistill.core.redact import redact_url
from promptdistill.sampling.batch_lines import (
    BatchWork,
    Merged,
    Records,
    chunks,
    merge_results,
    numbered,
    request_line,
)
from promptdistill.sampling.batch_state import BatchState, Recorded
from promptdistill.sampling.batch_view import BatchView
from promptdistill.sampling.engine import Job

GROWTH = 1.5  # poll interval factor
UNAVAILABLE_POLLS = 20  # polls in a row that cannot reach the endpoint: give up (batches stay)


def sample_batches(work: BatchWork) -> None:
    """Answer `work.jobs` through the Batch API; see the module docstring."""
    asyncio.run(_BatchRun(work).main())


def cancel_batches(work: BatchWork) -> None:
    """Cancel every recorded batch that is still running; the lines they answered are merged
    by the next `--batch-api` command, which asks the rest again."""

    async def main() -> None:
        run = _BatchRun(work)
        async with run.client:
            cancelled = 0
            for b in run.state.open():
                if b.batch_id is None:
                    continue
                if not b.finished:  # it may have ended since it was last polled
                    b.update(await run.client.retrieve(b.batch_id))
                if not b.finished:
                    b.update(await run.client.cancel(b.batch_id))
                    cancelled += 1
                    work.say(f"cancelled batch {b.batch_id} ({len(b.ids)} requests): {b.status}")
                else:
                    work.say(f"batch {b.batch_id} is {b.status} already: nothing to cancel")
                run.state.save()
        s = work.summary
        s.rows.append(("batches cancelled", str(cancelled)))
        s.batches_cancelled, s.batches_open = cancelled, len(run.state.open())
        s.pending = s.requested - s.answered_before - s.failed
        if not run.state.open():
            work.say(f"no open batches recorded in {work.run.batches}")

    asyncio.run(main())


class _BatchRun:
    def __init__(self, work: BatchWork) -> None:
        self.work = work
        t = work.config.teacher
        if t.base_url is None:
            raise UserError("--batch-api needs --base-url: the endpoint with /v1/batches")
        source = key_source(t) if work.api_key else None
        self.client = BatchClient(t.base_url, work.api_key, key_source=source)
        self.state = BatchState.load(work.run, self.client.public_url, t.model)
        self.pending: dict[str, Job] = {j.id: j for j in work.jobs}  # unanswered
        self.stop = asyncio.Event()
        self.interrupted = False
        self.records: Records | None = None
        self.submitted_now = 0

    async def main(self) -> None:
        w, s = self.work, self.work.summary
        async with self.client, w.stopping(self.stop):
            self.records = w.open_records()
            try:
                await self._rounds()
            finally:
                self.records.close()
                s.batches_open = len(self.state.open())
                s.pending = s.requested - s.answered_before - s.answered_now - s.failed
                s.interrupted = s.interrupted or self.interrupted or self.stop.is_set()
                self._summary_rows()

    async def _rounds(self) -> None:
        w, cfg = self.work, self.work.config.batch
        open_ = self.state.open()
        if open_:
            n = sum(len(b.ids) for b in open_)
            w.say(f"resuming {len(open_)} batches recorded in {w.run.batches} ({n} requests)")
        if not self.pending:
            return  # all answered (the open batches, if any, are left to --cancel-batches)
        await self._create_missing()
        submitted = self.state.submitted()
        todo = [j for j in w.jobs if j.id not in submitted]
        for round_ in range(cfg.rounds + 1):
            if todo:
                await self._submit(todo, round_)
            if self.stop.is_set():
                break
            leftover = await self._poll()
            if self.stop.is_set() or not leftover:
                break
            todo = [self.pending[i] for i in leftover if i in self.pending]
            if round_ == cfg.rounds:  # no follow-up left: failures for good
                self._fail(todo, f"no answer after {cfg.rounds + 1} batches")
                break
            if cfg.fallback == "online":
                w.say(f"asking the {len(todo)} prompts the batches did not answer online")
                await self._online(todo)
                break
            w.say(f"{len(todo)} prompts without an answer: a follow-up batch (round {round_ + 1})")

    # ------------------------------------------------------------------- submitting

    async def _submit(self, jobs: list[Job], round_: int) -> None:
        """Upload and create batches for `jobs`, recording each id as soon as it exists."""
        cfg, w = self.work.config.batch, self.work
        started = time.perf_counter()
        lines = ((j, request_line(j, w.body(j)) + b"\n") for j in jobs)
        sizes = 0
        made = 0
        for chunk in chunks(lines, cfg.max_requests, cfg.max_bytes):
            if self.stop.is_set():
                break
            data = b"".join(line for _, line in chunk)
            name = f"promptdistill-{w.run.path.name}-{len(self.state.batches) + 1}.jsonl"
            file_id = await self.client.upload(name, data)
            rec = Recorded(input_file_id=file_id, ids=[j.id for j, _ in chunk],
                           bytes=len(data), round=round_)  # fmt: skip
            self.state.batches.append(rec)
            self.state.save()  # before the batch exists: a kill now leaves an upload to find
            await self._create(rec)
            sizes += len(data)
            made += 1
            self.submitted_now += len(chunk)
        if made:
            took = time.perf_counter() - started
            w.say(
                f"submitted {sum(len(b.ids) for b in self.state.batches[-made:])} requests in "
                f"{made} batches ({sizes / 1e6:.1f} MB) in {took:.2f} s"
            )

    async def _create(self, rec: Recorded) -> None:
        metadata = {"promptdistill_run": self.work.run.path.name[:500],
                    "input_file_id": rec.input_file_id}  # fmt: skip
        rec.update(await self.client.create(rec.input_file_id, metadata))
        self.state.save()

    async def _create_missing(self) -> None:
        """Uploads recorded without their batch (killed in between): the batch may exist."""
        for rec in self.state.open():
            if rec.batch_id is None:
                found = await self.client.find(rec.input_file_id)
                if found is not None:
                    rec.update(found)
                    self.state.save()
                else:
                    await self._create(rec)

    # ------------------------------------------------------------------- polling

    async def _poll(self) -> list[str]:
        """Poll until every open batch is merged (or Ctrl-C); returns the prompt ids that the
        merged batches left without an answer and that may be asked again."""
        cfg = self.work.config.batch
        interval = cfg.poll_s
        leftover: list[str] = []
        unavailable = 0
        with BatchView(self.work.console, self.work.live, self.work.log_every_s) as view:
            while True:
                note = ""
                try:
                    for rec in self.state.open():
                        running = not rec.finished and rec.batch_id is not None
                        if running and rec.update(await self.client.retrieve(str(rec.batch_id))):
                            self.state.save()
                        if rec.finished:
                            leftover += await self._merge(rec)
                    unavailable = 0
                except BatchUnavailable as e:
                    unavailable += 1
                    if unavailable >= UNAVAILABLE_POLLS:
                        raise UserError(
                            f"{e}; the batches keep running: rerun to collect them"
                        ) from None
                    note = f"poll failed ({e}); trying again"
                if not self.state.open():
                    view.show(self.state.batches, 0.0, note)
                    return leftover
                view.show(self.state.batches, interval, note)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self.stop.wait()
                if self.stop.is_set():
                    self.interrupted = True
                    return leftover
                interval = min(interval * GROWTH, cfg.poll_max_s)

    async def _merge(self, rec: Recorded) -> list[str]:
        """Download a finished batch's files and merge them; returns its prompts to ask again."""
        w, s = self.work, self.work.summary
        data = b""
        for file_id in (rec.output_file_id, rec.error_file_id):
            if file_id:
                data += await self.client.download(file_id) + b"\n"
        assert self.records is not None
        where = f"batch {rec.batch_id}"
        merged = merge_results(numbered(data), where, self.pending, w.done_ids, self.records,
                               bool(w.config.logprobs))  # fmt: skip
        s.answered_now += merged.answered
        s.truncated += merged.truncated
        s.batch_input_tokens += merged.input_tokens
        s.batch_output_tokens += merged.output_tokens
        leftover = [i for i in rec.ids if i in self.pending and i not in merged.refused]
        self._fail([self.pending[i] for i in rec.ids if i in merged.refused], merged)
        if rec.status == "failed":  # the file was refused as a whole: asking again won't help
            why = "; ".join(rec.errors) or "no reason given"
            w.say(f"[red]batch {rec.batch_id} failed:[/] {why}")
            self._fail([self.pending[i] for i in leftover], f"{where} failed: {why}")
            leftover = []
        elif merged.fatal:
            w.say(f"[red]{where}:[/] {merged.fatal}")
            self._fail([self.pending[i] for i in leftover], merged.fatal)
            leftover = []
        elif leftover:
            shown = (merged.failed_lines + [f"{len(leftover)} prompts not answered"])[0]
            w.say(f"{where} ({rec.status}): {len(leftover)} prompts to ask again, e.g. {shown}")
        rec.merged = True
        self.state.save()
        return leftover

    def _fail(self, jobs: list[Job], why: str | Merged) -> None:
        """Failures for good: failures.jsonl (the next command asks them again)."""
        assert self.records is not None
        for job in jobs:
            reason = why if isinstance(why, str) else why.refused.get(job.id, "failed")
            self.records.on_failure(job, reason, "batch", None, 1)
            self.work.summary.failed += 1

    async def _online(self, jobs: list[Job]) -> None:
        assert self.records is not None
        self.records.close()  # the online engine writes samples.jsonl itself
        try:
            await self.work.online(jobs, self.stop)
        finally:
            self.records = self.work.open_records()
        if self.stop.is_set():
            self.interrupted = True

    def _summary_rows(self) -> None:
        s, st = self.work.summary, self.state
        open_ = st.open()
        s.rows.append(("sampled through", "the Batch API (half the online price)"))
        s.rows.append(("batches", f"{len(st.batches)} recorded, {len(open_)} still running"))
        if self.submitted_now:
            s.rows.append(("requests submitted now", str(self.submitted_now)))
        if open_:
            s.rows.append(("batch ids", ", ".join(b.batch_id or "?" for b in open_[:4])
                           + (" ..." if len(open_) > 4 else "")))  # fmt: skip
        s.rows.append(("batch record", redact_url(str(self.work.run.batches))))
