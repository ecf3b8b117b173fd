"""`promptdistill run`: sample -> train -> eval in one command, resumable and honest.

`run_pipeline` walks the stages in order and asks the ledger (ledger.py) whether each is up to
date, partial or stale; `--stream` (streaming.py) runs sample and train at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.personas import (
    LoadedPersona,
    data_roots,
    instructions_text,
    load_run_persona,
    same_persona,
)
from promptdistill.pipeline.config import RunConfig
from promptdistill.pipeline.ledger import STAGES, Ledger, plan_stage, stage_fingerprints, supersede
from promptdistill.sampling.summary import SampleSummary


@dataclass(kw_only=True)
class PipelineResult:
    run: RunDir
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None


def run_pipeline(cfg: RunConfig, run: RunDir, console: Console) -> PipelineResult:
    """Every stage in order: skipped when up to date, resumed when partial, redone (the old
    outputs moved aside) when its configuration changed."""
    persona = load_run_persona(cfg.persona, cfg.sample.data_dir)
    cfg = as_recorded(cfg, run)
    if cfg.sample.teacher.base_url is not None:
        from promptdistill.clients.endpoint import normalize_base_url

        normalize_base_url(cfg.sample.teacher.base_url)  # before the run directory exists
    with run.create().locked():  # one command writes a run at a time (core/rundir.py)
        pipeline = Pipeline(cfg, run, console, persona)
        for stage in STAGES:
            if stage not in pipeline.result.ran:  # train ran already when streamed with sample
                pipeline.stage(stage)
    result = pipeline.result
    if result.report is None and run.report_json.exists():
        from promptdistill.evaluation.report import load_report

        result.report = load_report(run.path)
    return result


def as_recorded(cfg: RunConfig, run: RunDir) -> RunConfig:
    """`cfg` with the persona spelt as the run recorded it, when both name the same file
    (`tiny` and `personas/tiny.yaml`): the stage fingerprints hold the spelling, and the same
    persona must not redo a run (issue #16)."""
    recorded = (run.stage_config("sample") or {}).get("persona") if run.path.is_dir() else None
    if recorded is None or recorded == cfg.persona:
        return cfg
    if not same_persona(str(recorded), cfg.persona, data_roots(cfg.sample.data_dir)):
        return cfg
    sample = cfg.sample.model_copy(update={"persona": str(recorded)})
    return cfg.model_copy(update={"persona": str(recorded), "sample": sample})


class Pipeline:
    """One `promptdistill run`: the ledger of its stages and how each stage is run."""

    def __init__(
        self, cfg: RunConfig, run: RunDir, console: Console, persona: LoadedPersona
    ) -> None:
        self.cfg, self.run, self.console, self.persona = cfg, run, console, persona
        self.ledger = Ledger.load(run)
        self.fps = stage_fingerprints(cfg, instructions_text(persona))
        self.scopes = {"sample": f"n={cfg.sample.n},heldout={cfg.sample.include_heldout}"}
        self.extra: dict[str, dict[str, Any]] = {"train": {"stream": True} if cfg.stream else {}}
        self.result = PipelineResult(run=run)
        run.save_stage_config(
            "run", {"persona": cfg.persona, "preset": cfg.preset, "stream": cfg.stream}
        )

    def say(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    def stage(self, stage: str) -> None:
        """Run `stage` if it is not up to date."""
        from promptdistill.evaluation.evaluate import evaluate_and_write
        from promptdistill.sampling.batch_run import batch_runner
        from promptdistill.sampling.sample import sample_run
        from promptdistill.training.run import train_run

        cfg = self.cfg
        action = self.begin(stage)
        if action is None:
            return
        resuming = " (resuming)" if action == "resume" else ""
        if stage == "sample" and cfg.stream:
            train_action = self.begin("train")
            if train_action is not None:
                resuming = " (resuming)" if "resume" in (action, train_action) else ""
                self.console.rule(f"sample + train, streaming{resuming}")
                self.streamed(sampling=True)
                return
        self.console.rule(f"{stage}{resuming}")
        if stage == "sample":
            summary = sample_run(
                cfg.sample, self.run, console=self.console, persona=self.persona, lock=False,
                batches=batch_runner(None) if cfg.sample.batch.api else None,
            )  # fmt: skip
            self.report_samples(summary)
        elif stage == "train" and cfg.stream:  # samples complete: one epoch over them, the same
            self.streamed(sampling=False)
            return
        elif stage == "train":
            outcome = train_run(self.run, cfg.student, cfg.datums, cfg.train, self.console)
            if outcome.interrupted:
                raise KeyboardInterrupt
        else:
            self.result.report = evaluate_and_write(self.run, cfg.eval, self.say, reuse=True)
        self.done(stage)

    def begin(self, stage: str) -> str | None:
        """Plan `stage` (see ledger.plan_stage) and mark it started: 'start' | 'resume', or
        None when it is up to date."""
        scope = self.scopes.get(stage, "")
        action, to_move = plan_stage(self.ledger, stage, self.fps[stage], scope, self.run)
        if action == "redo":
            was_streamed = bool(self.ledger.stages.get(stage, {}).get("stream"))
            why = ""
            if stage == "train" and was_streamed != self.cfg.stream:
                why = (
                    " (it was trained with --stream, one epoch as samples arrived)"
                    if was_streamed
                    else " (now with --stream)"
                )
            self.say(
                f"[yellow]warning:[/] the {stage} configuration changed since "
                f"{self.run.path} was made{why}; redoing {', '.join(to_move)}"
            )
            supersede(self.run, to_move, self.say)
            for s in to_move:
                self.ledger.forget(s)
            action = "start"
        if action == "skip":
            self.say(f"[green]✓[/] {stage}: up to date, skipped")
            self.result.skipped.append(stage)
            return None
        self.ledger.mark(stage, self.fps[stage], scope, complete=False, **self.extra.get(stage, {}))
        return action

    def done(self, stage: str) -> None:
        scope = self.scopes.get(stage, "")
        self.ledger.mark(stage, self.fps[stage], scope, complete=True, **self.extra.get(stage, {}))
        self.result.ran.append(stage)

    def report_samples(self, summary: SampleSummary) -> None:
        if summary.interrupted:
            if summary.batches_open:
                self.say(
                    f"{summary.batches_open} batches keep running on the server: rerun the same "
                    "command to collect them, or cancel them with `promptdistill sample ... "
                    "--batch-api --cancel-batches`"
                )
            raise KeyboardInterrupt
        if not summary.complete:
            raise UserError(
                f"{summary.failed} of {summary.requested} prompts failed (see "
                f"{self.run.failures}); rerun the same command to ask them again"
            )
        self.say(
            f"samples: {summary.requested} answered "
            f"({summary.answered_now} now, {summary.answered_before} before)"
        )

    def streamed(self, sampling: bool) -> None:
        """Sample (when `sampling`) and train at once, then record what finished."""
        from promptdistill.pipeline.streaming import stream_train

        cfg = self.cfg
        if sampling and cfg.sample.teacher.base_url is None:
            self.say(
                "note: --stream is meant for a remote teacher; the local teacher and the "
                "trainer share this machine"
            )
        outcome = stream_train(
            cfg.sample, cfg.student, cfg.datums, cfg.train, self.run, self.console,
            self.persona, sampling,
        )  # fmt: skip
        summary = outcome.sample
        if summary is not None and summary.complete:
            self.done("sample")
        if outcome.train.interrupted:
            raise KeyboardInterrupt
        if summary is not None:
            self.report_samples(summary)  # raises, leaving train to resume, if prompts failed
        self.done("train")
