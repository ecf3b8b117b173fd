"""sft vs kd vs onpolicy on the embedded default, with the same samples and the same training
wall-clock budget (issue #13). Prints one table per persona: median [min, max] over seeds.

For each persona the local teacher answers the demo's prompts once (120 training + the prompt
set's held-out prompts, 96 tokens, temperature 0.7; the samples are reused by every run). Then
for each seed:
- `sft` trains the demo's 2 epochs; its training time is the budget;
- `kd` and `onpolicy` train for as many steps as fit in that budget: sft's steps times the
  ratio of their seconds per step to sft's, from short calibration runs of all three made one
  after the other (so that the machine's load affects them alike);
- `sft --keep-loops` shows what the loop filter does;
and every run is evaluated like the demo (40 held-out prompts, no judge). Every stage runs
through the CLI, as a user runs it; `--work DIR` keeps the samples and runs for a rerun.

    .venv/bin/python benchmarks/objectives.py [--personas beethoven,nimbus-support]
        [--seeds 0,1,2] [--objectives sft,kd,onpolicy,sft-keep-loops:0,kd-ce1:0;1]
        [--work /tmp/pd-objectives]

(`NAME-ceW`: kd with `--ce-weight W`; `NAME-epN`: N epochs, whatever the budget; `:0;1` gives a
variant its own seeds.)

`--budget epochs` trains every objective for sft's 2 epochs instead (the same tokens: a kd
step cost 0.95x an sft step in CPU seconds, back to back): on a crowded machine the calibration
itself goes wrong, since threads that spin-wait for a descheduled peer count as CPU time (a
1,000-token kd step read 16-64 CPU s beside other jobs, 9-12 s on beethoven earlier).

Seconds per step and tokens/s are those of the runs themselves, and change with the machine's
load; CPU seconds per step (all threads) much less so, and the budget is set with them;
the student's generation speed for `onpolicy` is printed against the local teacher's sampling
phase on the same prompts (when the samples were made; benchmarks/generation.py times both in
one run). `-n N` samples N training prompts instead of the demo's 120 (in its own `--work`).
`--reeval` evaluates the finished runs in `--work` again, as they were trained, after a change
to eval.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTDISTILL = [sys.executable, "-m", "promptdistill"]
N_TRAIN, MAX_TOKENS, TEMPERATURE, HELDOUT = 120, 96, 0.7, 40
TRAIN = ["--warmup", "2", "--eval-every", "1000", "--save-every", "1000"]
METRICS = [  # (summary key, label, format)
    ("kl_student", "KL(T||student)", "{:.3f}"),
    ("kl_base", "KL(T||base)", "{:.3f}"),
    ("kl_ratio", "KL ratio", "{:.2f}"),
    ("prompt_effect_recovered", "effect rec.", "{:.2f}"),
    ("persona_classifier_student", "cls student", "{:.2f}"),
    ("persona_classifier_teacher", "cls teacher", "{:.2f}"),
    ("persona_classifier_base", "cls base", "{:.2f}"),
    ("cls_ratio", "cls S/T", "{:.2f}"),
    ("persona_classifier_cv_accuracy", "cls CV acc.", "{:.2f}"),
    ("chrf_student", "chrF S", "{:.1f}"),
    ("chrf_base", "chrF B", "{:.1f}"),
    ("rouge_l_student", "ROUGE-L S", "{:.3f}"),
    ("rouge_l_base", "ROUGE-L B", "{:.3f}"),
    ("loop_rate_student", "loops S", "{:.2f}"),
    ("loop_rate_teacher", "loops T", "{:.2f}"),
    ("loop_rate_base", "loops B", "{:.2f}"),
    ("steps", "steps", "{:.0f}"),
    ("step_s", "s/step", "{:.1f}"),
    ("cpu_step_s", "CPU s/step", "{:.1f}"),
    ("tokens_per_s", "tok/s", "{:.0f}"),
]


def cli(*args: str, log: Path) -> str:
    """Run a promptdistill command; its output goes to `log`; stop on failure."""
    with log.open("a") as f:
        f.write(f"$ promptdistill {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([*PROMPTDISTILL, *args], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"promptdistill {' '.join(args)} failed; see {log}")
    return log.read_text()


def sampled(persona: str, work: Path, log: Path, n: int = N_TRAIN) -> Path:
    """The persona's teacher samples (n training prompts and the held-out ones), made once."""
    run = work / persona / "samples"
    if not (run / "pipeline-done").exists():
        out = cli(
            "sample", persona, "--run", str(run), "-n", str(n), "--max-tokens",
            str(MAX_TOKENS), "--temperature", str(TEMPERATURE), "--log-every", "60", log=log,
        )  # fmt: skip
        phase = re.findall(r"sampling phase\s*.\s*[\d.]+ req/s over ([\d.]+) s", out)
        (run / "pipeline-done").write_text(f"{phase[-1] if phase else 'nan'}\n")
    return run


def fresh_run(samples: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("samples.jsonl", "config.yaml"):
        shutil.copy(samples / name, dest / name)
    if (samples / "system-prompts").is_dir():  # samples name their system prompt by hash (#16)
        shutil.copytree(samples / "system-prompts", dest / "system-prompts")
    return dest


def train_rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return [r for r in rows if r.get("type") == "train"]


def summary_of(run: Path, train_output: str) -> dict[str, Any]:
    """report.json's summary, plus the training run's steps, times and generation line."""
    rows = train_rows(run)
    s: dict[str, Any] = json.loads((run / "report.json").read_text())["summary"]
    s["steps"] = len(rows)
    s["train_s"] = sum(r["step_s"] for r in rows)
    s["step_s"] = statistics.median(r["step_s"] for r in rows)
    if all("cpu_s" in r for r in rows):
        s["cpu_step_s"] = statistics.median(r["cpu_s"] for r in rows)
    s["tokens_per_s"] = sum(r["tokens"] for r in rows) / max(s["train_s"], 1e-9)
    if s.get("kl_student") is not None and s.get("kl_base"):
        s["kl_ratio"] = s["kl_student"] / s["kl_base"]
    if s.get("persona_classifier_teacher"):
        s["cls_ratio"] = (s.get("persona_classifier_student") or 0) / s[
            "persona_classifier_teacher"
        ]
    # "student answers: N tokens in S s" (a narrow console may wrap it)
    gen = re.findall(r"student answers: (\d+) tokens in\s+([\d.]+)\s+s", train_output)
    s["generation"] = {"tokens": int(gen[-1][0]), "s": float(gen[-1][1])} if gen else None
    return s


def train_and_eval(
    samples: Path, dest: Path, seed: int, extra: list[str], log: Path
) -> dict[str, Any]:
    done = dest / "bench.json"  # a rerun with the same --work skips finished runs
    if done.is_file() and json.loads(done.read_text())["args"] == extra:
        return dict(json.loads(done.read_text())["summary"])
    run = fresh_run(samples, dest)
    out = cli("train", str(run), "--seed", str(seed), *TRAIN, *extra, log=log)
    evaluate(run, seed, log)
    s = summary_of(run, out)
    done.write_text(json.dumps({"args": extra, "summary": s}))
    return s


def evaluate(run: Path, seed: int, log: Path) -> None:
    cli("eval", str(run), "--no-judge", "--max-heldout", str(HELDOUT), "--max-new-tokens",
        str(MAX_TOKENS), "--seed", str(seed), "--latency-requests", "0", log=log)  # fmt: skip


def reevaluate(dest: Path, seed: int, log: Path) -> dict[str, Any]:
    """`--reeval`: a finished run's adapter evaluated again (after a change to eval), its
    training numbers kept."""
    done = json.loads((dest / "bench.json").read_text())
    evaluate(dest, seed, log)
    s = summary_of(dest, "")
    s["generation"] = done["summary"].get("generation")
    (dest / "bench.json").write_text(json.dumps({"args": done["args"], "summary": s}))
    return s


def seconds_per_step(samples: Path, work: Path, label: str, flags: list[str], log: Path) -> float:
    """A short calibration run: the mean CPU seconds of its steps (the first included). CPU
    time, not wall time: a busy machine stretches the latter several-fold (a kd calibration
    read 54 s/step beside another job, 14 s alone), and the former by far less."""
    run = work / f"calibrate-{label}"
    if (run / "calibrated").is_file():
        return float((run / "calibrated").read_text())
    run = fresh_run(samples, run)
    cli("train", str(run), *flags, "--steps", "4", *TRAIN, log=log)
    mean = statistics.mean(r["cpu_s"] for r in train_rows(run))
    (run / "calibrated").write_text(f"{mean}\n")
    return mean


def budget_steps(
    samples: Path, work: Path, sft_steps: int, kinds: dict[str, list[str]], log: Path
) -> dict[str, int]:
    """Steps per kind of run (objective and batch size) in sft's training time: sft's steps
    scaled by the ratio of the seconds per step, all calibrated one after the other."""
    kinds = {"sft": ["--objective", "sft"], **kinds}
    per = {k: seconds_per_step(samples, work, k, flags, log) for k, flags in kinds.items()}
    print("CPU s/step (calibration): " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
    return {k: max(1, round(sft_steps * per["sft"] / per[k])) for k in kinds if k != "sft"}


MODIFIER = re.compile(r"keep-loops|ce[\d.]+|bt\d+|ep\d+")  # what may follow an objective's name


@dataclass(kw_only=True)
class Variant:
    label: str  # as given: `kd-bt1024`
    kind: str  # what sets a step's cost, calibrated once: the objective and its batch size
    flags: list[str]  # train flags
    cost_flags: list[str]  # the flags of its calibration run
    seeds: list[int]
    fixed: bool = False  # `-epN`: its own epochs, not the time budget


def variant(spec: str, seeds: list[int]) -> Variant:
    """`kd`, `sft-keep-loops`, `kd-ce1` (kd + 1 x the NLL), `kd-bt1024` (1,024-token batches:
    more, smaller steps), `kd-bt1024-ep4` (4 epochs, whatever the budget), each optionally
    `:0;1` for its own seeds."""
    label, _, own = spec.partition(":")
    name, _, rest = label.partition("-")
    if MODIFIER.sub("", rest).strip("-"):
        sys.exit(f"unknown variant {spec!r}: use NAME with -keep-loops, -ceW, -btN or -epN")
    flags = ["--objective", name]
    batch: list[str] = []
    epochs: list[str] = []
    for mod in MODIFIER.findall(rest):
        if mod == "keep-loops":
            flags.append("--keep-loops")
        elif mod.startswith("ce"):
            flags += ["--ce-weight", mod[2:]]
        elif mod.startswith("ep"):
            epochs = ["--epochs", mod[2:]]
        else:
            batch = ["--batch-tokens", mod[2:]]
    return Variant(
        label=label,
        kind=name + (f"-bt{batch[1]}" if batch else ""),
        flags=flags + batch + epochs,
        cost_flags=["--objective", name, *batch],
        fixed=bool(epochs),
        seeds=[int(x) for x in own.split(";")] if own else seeds,
    )


def fmt(values: list[float], spec: str) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return spec.format(med)
    return f"{spec.format(med)} [{spec.format(min(values))}, {spec.format(max(values))}]"


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    names = list(rows)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, spec in METRICS:
        cells = [fmt([r[key] for r in rows[n] if r.get(key) is not None], spec) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--personas", default="beethoven,nimbus-support")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--objectives", default="sft,kd,onpolicy,sft-keep-loops")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pd-objectives"))
    ap.add_argument("-n", type=int, default=N_TRAIN, help="training prompts (the demo's 120)")
    ap.add_argument(
        "--budget",
        choices=["cpu", "epochs"],
        default="cpu",
        help="cpu: steps by calibrated CPU s/step (default); epochs: sft's 2 epochs for all, "
        "when contention spoils the calibration (spin-waiting threads count as CPU time)",
    )
    ap.add_argument(
        "--reeval", action="store_true",
        help="evaluate the finished runs in --work again, as they were trained (after a change "
        "to eval); nothing is sampled or trained",
    )  # fmt: skip
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "log.txt"
    print(f"load {os.getloadavg()[0]:.2f}; logs in {log}", flush=True)
    for persona in a.personas.split(","):
        samples = sampled(persona, a.work, log, a.n)
        teacher_s = float((samples / "pipeline-done").read_text())
        teacher_tokens = sum(
            json.loads(x)["usage"].get("completion_tokens", 0)
            for x in (samples / "samples.jsonl").read_text().splitlines()
            if x
        )
        results: dict[str, list[dict[str, Any]]] = {}
        runs = [variant(o, seeds) for o in a.objectives.split(",")]
        runs.sort(key=lambda v: v.label != "sft")  # sft first: its steps set the budget
        steps: dict[str, int] = {}
        for v in runs if a.reeval else []:
            for seed in v.seeds:
                dest = a.work / persona / f"{v.label}-seed{seed}"
                if not (dest / "bench.json").is_file():
                    sys.exit(f"--reeval: {dest} has no finished run; run without --reeval first")
                results.setdefault(v.label, []).append(reevaluate(dest, seed, log))
                print(f"{persona} {v.label} seed {seed}: evaluated again", flush=True)
        for v in [] if a.reeval else runs:
            label, kind = v.label, v.kind
            if a.budget == "epochs":
                steps[kind] = 0  # the demo's epochs, as sft
            if kind != "sft" and kind not in steps and not v.fixed:
                sft_steps = results["sft"][0]["steps"]
                kinds = {r.kind: r.cost_flags for r in runs if r.kind != "sft"}
                steps |= budget_steps(samples, a.work / persona, sft_steps, kinds, log)
            for seed in v.seeds:
                extra = list(v.flags)
                if kind != "sft" and not v.fixed and steps[kind]:
                    extra += ["--steps", str(steps[kind])]
                dest = a.work / persona / f"{label}-seed{seed}"
                r = train_and_eval(samples, dest, seed, extra, log)
                results.setdefault(label, []).append(r)
                print(f"{persona} {label} seed {seed}: " + ", ".join(
                    f"{k} {r.get(k):.3f}" for k, _, _ in METRICS[:4] if r.get(k) is not None
                ), flush=True)  # fmt: skip
        if "sft" in results:
            budget = statistics.median(r["train_s"] for r in results["sft"])
            print(f"\n### {persona} (training budget: sft's 2 epochs, {budget:.0f} s)\n")
        else:  # --budget epochs without sft
            print(f"\n### {persona} (sft's 2 epochs; an -epN variant its N)\n")
        print(table(results))
        gens = [r["generation"] for r in results.get("onpolicy", []) if r.get("generation")]
        if gens:
            rates = [g["tokens"] / g["s"] for g in gens]
            print(f"\nonpolicy: the student generated {fmt(rates, '{:.0f}')} tok/s while training; "
                  f"the local teacher sampled (with the system prompt) at "
                  f"{teacher_tokens / teacher_s:.0f} tok/s ({teacher_tokens} tokens in its "
                  f"{teacher_s:.0f} s sampling phase, an earlier run; benchmarks/generation.py "
                  f"times both in one run)")  # fmt: skip
        (a.work / persona / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nload {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
