"""The embedded teacher in process against `transformers serve`, on the same prompts, in one run.

`promptdistill sample` with no --base-url now answers in this process, in batches that share
the system prompt's cache (clients/in_process.py). Before, it started `transformers serve` and
sent it 4 requests at a time (the measured best, docs/benchmarks.md "Local teacher"). This times
both through `sample_run`, as a user's `sample` runs, on the persona's first N prompts:

1. in process: `sample_run` with no base URL (batches of up to 24);
2. served: `running_local_teacher` (the same server and flags `sample` used to start), one
   untimed request first so its prefix cache holds the system prompt (what `sample` did with its
   first request alone), then `sample_run` against it with 4 requests in flight.

Rounds alternate (in process, served, in process, ...), each into a fresh run directory, so both
sides see the machine's load in the same minutes. Reported: generated tokens/s over the sampling
phase (first request to last answer), per round, their medians, and the ratio of medians.

    .venv/bin/python benchmarks/teacher_in_process.py [--persona beethoven] [-n 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptdistill.clients.local_server import running_local_teacher  # noqa: E402
from promptdistill.core.config import SampleConfig  # noqa: E402
from promptdistill.core.rundir import RunDir  # noqa: E402
from promptdistill.personas import expand_prompts, load_persona  # noqa: E402
from promptdistill.sampling.sample import sample_run  # noqa: E402

MAX_TOKENS, TEMPERATURE, TOP_P, SERVED_IN_FLIGHT = 96, 0.7, 0.95, 4


def config(persona: str, n: int, base_url: str | None, model: str) -> SampleConfig:
    return SampleConfig.model_validate(
        {
            "persona": persona,
            "n": n,
            "include_heldout": False,
            "teacher": {"base_url": base_url, "model": model, "concurrency": 24 if base_url is None
                        else SERVED_IN_FLIGHT, "timeout_s": 1800},
            "sampling": {"max_tokens": MAX_TOKENS, "temperature": TEMPERATURE, "top_p": TOP_P},
        }
    )  # fmt: skip


def timed(cfg: SampleConfig, work: Path) -> tuple[float, int]:
    """Sampling-phase seconds and generated tokens of one `sample_run` into a fresh run."""
    run = RunDir(Path(tempfile.mkdtemp(dir=work)) / "run")
    quiet = Console(file=io.StringIO())
    s = sample_run(cfg, run, console=quiet, live=False, log=lambda _m: None, handle_sigint=False)
    if s.answered_now != cfg.n:
        sys.exit(f"only {s.answered_now} of {cfg.n} answered ({s.failed} failed)")
    return s.sampling_s, s.output_tokens


def warm(base_url: str, model: str, persona: str) -> None:
    """One untimed request with the persona's system prompt: fills the server's prefix cache."""
    system = load_persona(persona).persona.system_prompt
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
    body = {"model": model, "max_tokens": 4, "temperature": TEMPERATURE, "messages": messages}
    request = urllib.request.Request(
        f"{base_url}/chat/completions", orjson.dumps(body), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as r:
        r.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persona", default="beethoven")
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    assert len(expand_prompts(load_persona(a.persona), a.n, 0)) == a.n
    print(f"load {os.getloadavg()[0]:.2f}; {a.persona}, {a.n} prompts, {MAX_TOKENS} tokens, "
          f"temperature {TEMPERATURE}", flush=True)  # fmt: skip
    rates: dict[str, list[float]] = {"in process": [], "served": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for k in range(a.rounds):
            s, tokens = timed(config(a.persona, a.n, None, "smollm2-135m"), work)
            rates["in process"].append(tokens / s)
            load = os.getloadavg()[0]
            print(f"round {k + 1}: in process {tokens} tokens in {s:.1f} s = "
                  f"{tokens / s:.1f} tok/s (load {load:.2f})", flush=True)  # fmt: skip
            t0 = time.monotonic()
            with running_local_teacher("smollm2-135m") as teacher:
                warm(teacher.base_url, teacher.model, a.persona)
                up = time.monotonic() - t0
                s, tokens = timed(config(a.persona, a.n, teacher.base_url, teacher.model), work)
            rates["served"].append(tokens / s)
            print(f"round {k + 1}: served ({SERVED_IN_FLIGHT} in flight; start + warm-up "
                  f"{up:.1f} s, not counted) {tokens} tokens in {s:.1f} s = {tokens / s:.1f} "
                  f"tok/s (load {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in rates.items():
        print(f"{k}: median {med[k]:.1f} tok/s [{min(v):.1f}, {max(v):.1f}]")
    print(f"in process / served: {med['in process'] / med['served']:.2f}x (ratio of medians)")


if __name__ == "__main__":
    main()
