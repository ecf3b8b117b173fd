"""The student's in-process batched generation (what `--objective onpolicy` runs each step)
against the local teacher (what `sample` uses), on the same prompts, timed one after the other
in one run (issue #13: >= 3x the teacher's generated tokens/s).

1. `promptdistill sample PERSONA -n N` with the local teacher: the persona's system prompt plus
   each prompt, 96 tokens at temperature 0.7; generated tokens over the sampling phase. Since
   2026-12-02 (fourth session) `sample` answers in process too, in batches that share the
   system prompt's cache; the numbers in docs/benchmarks.md "Objectives" were taken when it
   still went to `transformers serve` (benchmarks/teacher_in_process.py compares the two).
2. The same prompts without the system prompt (as the student sees them), answered by the
   student model through the one generation engine (models/generate.py), in batches of
   `--batch` rows as an on-policy micro-batch is (a 4096-token batch holds ~24 examples).

    .venv/bin/python benchmarks/generation.py [--persona beethoven] [-n 24] [--batch 24]

Both sides share the machine's load in the same minutes; run it on a quiet machine anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS, TEMPERATURE, TOP_P = 96, 0.7, 0.95


def teacher(persona: str, n: int, run: Path) -> tuple[list[dict], int, float]:
    """The local teacher's samples, generated tokens and sampling-phase seconds."""
    proc = subprocess.run(
        [sys.executable, "-m", "promptdistill", "sample", persona, "--run", str(run), "-n",
         str(n), "--max-tokens", str(MAX_TOKENS), "--temperature", str(TEMPERATURE),
         "--top-p", str(TOP_P)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    if proc.returncode:
        sys.exit(f"sample failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    phase = re.findall(r"sampling phase\s*.\s*[\d.]+ req/s over ([\d.]+) s", proc.stdout)
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines() if x]
    tokens = sum(s["usage"].get("completion_tokens", 0) for s in samples)
    return samples, tokens, float(phase[-1])


def student(samples: list[dict], batch: int) -> tuple[int, float]:
    """The same prompts, no system prompt, answered in process: generated tokens, seconds."""
    import torch

    from promptdistill.models.chat import Renderer
    from promptdistill.models.generate import generate
    from promptdistill.models.load import load_causal_lm, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_causal_lm("smollm2-135m", "bfloat16")
    renderer = Renderer(load_tokenizer("smollm2-135m"))
    users = [next(m["content"] for m in s["messages"] if m["role"] == "user") for s in samples]
    prompts = [renderer.prompt([{"role": "user", "content": u}]) for u in users]
    tokens, t0 = 0, time.perf_counter()
    for start in range(0, len(prompts), batch):
        out = generate(
            model, prompts[start : start + batch], max_new_tokens=MAX_TOKENS,
            stop_ids=renderer.stop_ids, pad_id=renderer.pad_id, temperature=TEMPERATURE,
            top_p=TOP_P, seed=start, batch_size=batch, suppress_ids=renderer.inner_special_ids,
        )  # fmt: skip
        tokens += sum(len(g.tokens) for g in out)  # as completion_tokens counts
    return tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persona", default="beethoven")
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--batch", type=int, default=24)
    a = ap.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        samples, t_tokens, t_s = teacher(a.persona, a.n, Path(tmp) / "run")
    s_tokens, s_s = student(samples, a.batch)
    t_rate, s_rate = t_tokens / t_s, s_tokens / s_s
    print(f"local teacher (transformers serve, with the system prompt): {len(samples)} answers, "
          f"{t_tokens} tokens in {t_s:.1f} s = {t_rate:.1f} tok/s")  # fmt: skip
    print(f"student in process (batches of {a.batch}, no system prompt): {s_tokens} tokens in "
          f"{s_s:.1f} s = {s_rate:.1f} tok/s")  # fmt: skip
    print(f"ratio student / teacher: {s_rate / t_rate:.2f}x; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
