"""`promptdistill run --stream`: sample and train at once, one epoch over the samples as they
arrive. This is the only place that starts both: the sampling thread (sampling/thread.py)
appends to RUN/samples.jsonl, and the trainer reads it through a `SampleStream`
(training/stream.py), so training never imports sampling."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from rich.console import Console

from promptdistill.core.config import DatumConfig, SampleConfig, StudentConfig, TrainConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import repair_jsonl
from promptdistill.core.rundir import RunDir
from promptdistill.models.chat import Renderer
from promptdistill.models.load import load_tokenizer
from promptdistill.personas import LoadedPersona, expand_prompts
from promptdistill.sampling.summary import SampleSummary
from promptdistill.sampling.thread import SamplingThread
from promptdistill.training.run import TrainResult, train_run
from promptdistill.training.stream import SampleStream


@dataclass(kw_only=True)
class StreamOutcome:
    train: TrainResult
    sample: SampleSummary | None  # None when the samples were complete before the stream


def stream_train(
    sample_cfg: SampleConfig,
    student: StudentConfig,
    datum_cfg: DatumConfig,
    train_cfg: TrainConfig,
    run: RunDir,
    console: Console,
    persona: LoadedPersona,
    sample: bool,
) -> StreamOutcome:
    """Sample (when `sample`) and train at once; one epoch over the samples as they arrive.

    Raises the sampler's error (a UserError for a fatal endpoint error) after training has
    stopped and saved a checkpoint."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "--stream trains in one process; for several GPUs sample first (`promptdistill "
            "sample`), then `torchrun ... -m promptdistill train RUN`"
        )
    repair_jsonl(run.samples)  # a torn last line goes before anything reads offsets
    stop = threading.Event()
    sampler = SamplingThread(sample_cfg, run, console, persona, stop) if sample else None
    wanted = [p.id for p in expand_prompts(persona, sample_cfg.n, sample_cfg.seed)]
    source = SampleStream(
        run, datum_cfg, student.model, Renderer(load_tokenizer(student.model)), train_cfg,
        wanted, stop, sampler, say=console.print,
    )  # fmt: skip
    if sampler is not None:
        sampler.start()
    try:
        source.open()  # waits for the sampler's config.yaml entry
        result = train_run(run, student, datum_cfg, train_cfg, console, stream=source.with_batching)
    finally:
        if sampler is not None:
            stop.set()  # a no-op when sampling has ended; otherwise training failed: stop it
            sampler.join()
    if sampler is not None and sampler.error is not None:
        raise sampler.error
    return StreamOutcome(train=result, sample=sampler.summary if sampler is not None else None)
