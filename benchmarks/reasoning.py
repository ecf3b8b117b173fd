"""Correctness-filtered chain-of-thought distillation on the embedded default (issue #17):
`--keep correct` against `--keep all`, on `mathtutor`, median [min, max] over seeds.

For each seed, the local teacher (SmolLM2-135M with Ada's system prompt) answers N training
prompts plus the prompt set's held-out prompts once with `sample --keep correct --attempts K`:
a training prompt whose answer is wrong is asked again, with a new seed, up to K times. The
`--keep all` run gets exactly the same first answers (the attempt-0 records of those samples,
copied into its own run directory), so the two differ only in what they train on:
- keep all: every first answer, right or wrong;
- keep correct: only right answers (first or later attempts); the rest left out.
Both are trained alike (the demo's 2 epochs, the seed's data order) and evaluated alike
(held-out prompts with gold answers, no judge). Every stage runs through the CLI, as a user
runs it; `--work DIR` keeps the runs for a rerun, which skips what is done.

    nice -n 15 .venv/bin/python benchmarks/reasoning.py [--n 120] [--attempts 4]
        [--seeds 0,1,2] [--max-tokens 160] [--heldout N] [--work /tmp/pd-reasoning]

Reported per condition: final-answer accuracy of teacher (first answers), student and base on
the held-out prompts, the students' answer length in tokens, and the share of teacher traces
kept for training (kept training prompts / training prompts; for keep all, every one). When
no trace is right, `--keep correct` has nothing to train on: `train`'s one-line error is shown
and that row has no student. `--heldout N` samples only the first N held-out prompts (a copy of
the shipped persona under WORK/data, passed with `--data-dir`), for a slow machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMPTDISTILL = [sys.executable, "-m", "promptdistill"]
PERSONA = "mathtutor"
METRICS = [  # (key, label, format)
    ("teacher_train_first", "teacher right, train (1st)", "{:.3f}"),
    ("task_accuracy_teacher", "acc teacher", "{:.3f}"),
    ("task_accuracy_student", "acc student", "{:.3f}"),
    ("task_accuracy_base", "acc base", "{:.3f}"),
    ("answer_tokens_student", "len student", "{:.0f}"),
    ("kept_share", "traces kept", "{:.3f}"),
    ("train_examples", "train ex.", "{:.0f}"),
]


def cli(*args: str, may_fail: str | None = None) -> bool:
    """Run a CLI stage; False when it failed with the one-line error `may_fail` names."""
    cmd = [*PROMPTDISTILL, *args]
    print(f"$ promptdistill {' '.join(args)}   (load {load()})", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode and may_fail is not None and may_fail in proc.stderr:
        print(f"  -> {proc.stderr.strip().splitlines()[-1]}", flush=True)
        return False
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return True


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def records(run: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in (run / "samples.jsonl").read_bytes().splitlines() if x]


def data_dir(a: argparse.Namespace) -> list[str]:
    """`--heldout N`: the shipped mathtutor with its first N held-out prompts only, as a user's
    persona of the same name (`--data-dir`), so a slow machine samples fewer of them."""
    if a.heldout is None:
        return []
    from promptdistill.personas import shipped_root

    root = a.work / "data"
    for kind in ("personas", "prompts"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        text = (shipped_root() / kind / f"{PERSONA}.yaml").read_text()
        if kind == "prompts":
            spec = yaml.safe_load(text)
            spec["heldout"] = spec["heldout"][: a.heldout]
            text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
        (root / kind / f"{PERSONA}.yaml").write_text(text)
    return ["--data-dir", str(root)]


def sample(run: Path, a: argparse.Namespace, seed: int) -> None:
    cli("sample", PERSONA, "--run", str(run), "-n", str(a.n), "--keep", "correct",
        "--attempts", str(a.attempts), "--prompt-seed", str(seed), "--seed", str(seed),
        "--max-tokens", str(a.max_tokens), *data_dir(a))  # fmt: skip


def first_answers(src: Path, dst: Path) -> None:
    """The same teacher answers, first attempts only, as a `--keep all` run."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "system-prompts", dst / "system-prompts", dirs_exist_ok=True)
    first = [r for r in records(src) if not r.get("attempt")]
    (dst / "samples.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in first))
    config = yaml.safe_load((src / "config.yaml").read_text())
    config = {"sample": {**config["sample"], "keep": "all", "attempts": 1}}
    (dst / "config.yaml").write_text(yaml.safe_dump(config))


def train_and_eval(run: Path, a: argparse.Namespace, seed: int) -> dict[str, Any]:
    train = [r for r in records(run) if r.get("split") == "train"]
    ids = {r["id"] for r in train}
    keep = yaml.safe_load((run / "config.yaml").read_text())["sample"].get("keep", "all")
    kept = {r["id"] for r in train if keep == "all" or r.get("correct")}
    first = [r for r in train if not r.get("attempt") and isinstance(r.get("correct"), bool)]
    held = [r for r in records(run) if r.get("split") == "heldout" and "correct" in r]
    out: dict[str, Any] = {
        "seed": seed,
        "kept_share": len(kept) / max(1, len(ids)),
        "teacher_train_first": sum(r["correct"] for r in first) / max(1, len(first)),
        # the held-out answers as graded when sampled (eval's own number replaces it below)
        "task_accuracy_teacher": sum(r["correct"] for r in held) / max(1, len(held)),
    }
    trained = (run / "adapter" / "adapter_config.json").is_file()
    if not trained:
        # every trace wrong under --keep correct: `train` says so in one line, nothing to train
        trained = cli("train", str(run), "--epochs", str(a.epochs), "--seed", str(seed),
                      "--warmup", "2", "--eval-every", "1000", "--save-every", "1000",
                      may_fail="no usable training samples")  # fmt: skip
    if not trained:
        out["train_examples"] = 0
        return out
    if not (run / "report.json").is_file():
        cli("eval", str(run), "--no-judge", "--seed", str(seed), "--latency-requests", "0",
            "--max-heldout", str(a.max_heldout))  # fmt: skip
    out |= json.loads((run / "report.json").read_text())["summary"]
    stats = json.loads((run / "datums" / "stats.json").read_text())
    out["train_examples"] = stats["train"]["examples"] + stats["val"]["examples"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--attempts", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-heldout", type=int, default=40)
    ap.add_argument("--heldout", type=int, default=None, help="sample only the first N held-out")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pd-reasoning"))
    a = ap.parse_args()
    print("command: " + " ".join([sys.executable, *sys.argv]), flush=True)
    print(f"load average at start: {load()} ({os.cpu_count()} CPUs)", flush=True)
    results: dict[str, list[dict[str, Any]]] = {"keep all": [], "keep correct": []}
    for seed in (int(s) for s in a.seeds.split(",")):
        correct, every = a.work / f"correct-s{seed}", a.work / f"all-s{seed}"
        sample(correct, a, seed)  # resumes, and asks nothing when done
        if not (every / "samples.jsonl").is_file():
            first_answers(correct, every)
        results["keep correct"].append(train_and_eval(correct, a, seed))
        results["keep all"].append(train_and_eval(every, a, seed))
        table(results)
    print(f"load average at the end: {load()}", flush=True)
    (a.work / "results.json").write_text(json.dumps(results, indent=2))


def table(results: dict[str, list[dict[str, Any]]]) -> None:
    def cell(rs: list[dict[str, Any]], key: str, spec: str) -> str:
        xs = [r[key] for r in rs if r.get(key) is not None]
        if not xs:
            return "-"
        med = spec.format(statistics.median(xs))
        return med if len(xs) == 1 else f"{med} [{spec.format(min(xs))}, {spec.format(max(xs))}]"

    print("| run | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for name, rs in results.items():
        cells = [cell(rs, key, spec) for key, _, spec in METRICS]
        print(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
