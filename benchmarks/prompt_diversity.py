"""Teacher-written prompts against template expansion: how varied is each (issue #14)?

For every seed it runs the real command, `promptdistill prompts generate PERSONA -n N --seed S
--out WORK/seedS/PERSONA-generated.jsonl --no-add` (the local teacher, or --base-url/--model),
then measures the N prompts written and, as the baseline, the first N prompts of the persona's
template expansion with the same seed: distinct-2 (higher is more varied) and the mean pairwise
MiniLM cosine similarity (lower is more varied); the same functions the command prints with
(sampling/userprompts.py: diversity, template_baseline). A rerun with the same --work asks the
teacher nothing again (`prompts generate` resumes from its replies file).

    .venv/bin/python benchmarks/prompt_diversity.py [--persona beethoven] [--n 32]
        [--seeds 0,1,2] [--base-url URL --model NAME] [--work /tmp/pd-diversity]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

from promptdistill.models.embed import Embedder
from promptdistill.personas import load_persona
from promptdistill.sampling.userprompts import diversity, template_baseline


def generate(args: argparse.Namespace, seed: int) -> tuple[list[str], float]:
    out = Path(args.work) / f"seed{seed}" / f"{args.persona}-generated.jsonl"
    cmd = ["promptdistill", "prompts", "generate", args.persona, "-n", str(args.n),
           "--seed", str(seed), "--out", str(out), "--no-add"]  # fmt: skip
    if args.base_url:
        cmd += ["--base-url", args.base_url, "--model", args.model]
    print(f"$ {shlex.join(cmd)}", flush=True)
    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "promptdistill", *cmd[1:]], capture_output=True, text=True
    )
    seconds = time.monotonic() - start
    # exit 1: fewer than N distinct prompts within --max-requests; what it wrote is measured
    if r.returncode not in (0, 1) or not out.is_file():
        sys.exit(f"seed {seed} failed (exit {r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    summary = [ln for ln in r.stdout.splitlines() if " prompts written to " in ln]
    print(f"  {summary[-1] if summary else r.stdout.strip().splitlines()[-1]}", flush=True)
    prompts = [orjson.loads(line)["prompt"] for line in out.read_bytes().splitlines()]
    return prompts, seconds


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persona", default="beethoven")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--work", default="/tmp/pd-diversity")
    args = ap.parse_args()
    if args.base_url and not args.model:
        ap.error("--model is required with --base-url")
    print(f"$ {shlex.join(['python', *sys.argv])}")
    persona = load_persona(args.persona)
    embedder = Embedder()
    rows: dict[str, dict[str, list[float]]] = {"teacher-written": {}, "template expansion": {}}
    print("\n| seed | prompts | N | distinct-2 | mean pairwise cosine | generate wall s |")
    print("|---|---|---:|---:|---:|---:|")
    for seed in [int(s) for s in args.seeds.split(",")]:
        written, seconds = generate(args, seed)
        baseline = template_baseline(persona, len(written), seed)
        for name, texts, wall in (("teacher-written", written, f"{seconds:.0f}"),
                                  ("template expansion", baseline, "")):  # fmt: skip
            d = diversity(texts, embedder.encode)
            for key in ("distinct_2", "mean_pairwise_cosine"):
                rows[name].setdefault(key, []).append(d[key])
            print(f"| {seed} | {name} | {d['prompts']} | {d['distinct_2']:.3f} | "
                  f"{d['mean_pairwise_cosine']:.3f} | {wall} |", flush=True)  # fmt: skip
    print("\nmedian [range] over seeds:\n")
    print(
        "| prompts | distinct-2 (higher: more varied) | mean pairwise cosine (lower: more varied) |"
    )
    print("|---|---:|---:|")
    for name, values in rows.items():
        print(f"| {name} | {spread(values['distinct_2'])} | "
              f"{spread(values['mean_pairwise_cosine'])} |")  # fmt: skip


if __name__ == "__main__":
    main()
