"""`sample_run` in a background thread, for `promptdistill run --stream`.

Training runs in the main thread and tails RUN/samples.jsonl while this thread appends to it.
"""

from __future__ import annotations

import threading

from rich.console import Console

from promptdistill.core.config import SampleConfig
from promptdistill.core.rundir import RunDir
from promptdistill.personas import LoadedPersona
from promptdistill.sampling.sample import sample_run
from promptdistill.sampling.summary import SampleSummary

SAMPLER_LOG_S = 15.0  # the sampler's progress line, between the trainer's


class SamplingThread:
    """`sample_run` in a background thread (an event loop of its own). Ctrl-C reaches only the
    main thread, so it is stopped through `stop`, the event the trainer also stops on; a fatal
    endpoint error sets `stop` too, so training stops at the next step with a checkpoint."""

    def __init__(
        self,
        cfg: SampleConfig,
        run: RunDir,
        console: Console,
        persona: LoadedPersona,
        stop: threading.Event,
    ) -> None:
        self.cfg, self.run, self.console, self.persona, self.stop = cfg, run, console, persona, stop
        self.ready = threading.Event()  # its config.yaml entry is written (the trainer writes next)
        self.done = threading.Event()
        self.summary: SampleSummary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            self.summary = sample_run(
                self.cfg,
                self.run,
                console=self.console,
                live=False,  # one live display at a time: the trainer's
                log_every_s=SAMPLER_LOG_S,
                handle_sigint=False,
                persona=self.persona,
                stop=self.stop,
                ready=self.ready,
                lock=False,  # the command that started this thread holds the run's lock
            )
        except BaseException as e:  # reported by the main thread once training has stopped
            self.error = e
            self.stop.set()
        finally:
            self.ready.set()
            self.done.set()
