"""Top-K logprobs from an endpoint: a (K+1)th bucket for the tail, or renormalised? (issue #13)

An endpoint gives at most the top K logprobs of each answer token (OpenAI: K <= 20), so `kd`
from an endpoint sees a truncated teacher. This compares, on the same samples and steps:
- `full`: kd on the teacher's whole distribution (the embedded teacher, in process);
- `bucket`: kd on its top K, the rest one more bucket (TRL's `loss_add_tail`);
- `renorm`: kd on its top K renormalised to sum to 1 (tinker-cookbook's sdft.py);
and reports the held-out KL(teacher || student) on the full distributions (eval's `kl_student`).

The top-K logprobs are the embedded teacher's own (base model + system prompt), written into a
copy of the samples in the compact form `sample --logprobs K` stores, so the only difference
between the runs is what the loss sees of the teacher.

    .venv/bin/python benchmarks/topk.py --samples /tmp/pd-objectives/beethoven/samples [--k 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def teacher_topk(samples: Path, out: Path, k: int) -> None:
    """samples.jsonl with the embedded teacher's top-K logprobs of every answer token."""
    import torch

    from promptdistill.core.samples import SampleReader
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_causal_lm, load_tokenizer

    renderer = Renderer(load_tokenizer("smollm2-135m"))
    model = load_causal_lm("smollm2-135m", "auto")
    lines = []
    # the records with their system prompts back in (samples name them by hash, issue #16)
    for r in SampleReader(samples / "samples.jsonl").records():
        prompt = renderer.prompt(r["messages"][:-1])
        answer = renderer.tokenizer(r["messages"][-1]["content"], add_special_tokens=False)[
            "input_ids"
        ]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
        logp = logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)].log_softmax(-1)
        top = logp.topk(k, dim=-1)
        r["logprobs"] = []
        for j, t in enumerate(answer):
            alternatives = zip(top.values[j].tolist(), top.indices[j].tolist(), strict=True)
            r["logprobs"].append(
                [renderer.token_text(t), float(logp[j, t]),
                 [[renderer.token_text(i), v] for v, i in alternatives]]
            )  # fmt: skip
        lines.append(json.dumps(r))
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").write_text("\n".join(lines) + "\n")
    config = (samples / "config.yaml").read_text()
    # an endpoint run: `train` then uses the stored top-K, not the in-process teacher
    (out / "config.yaml").write_text(
        config.replace("base_url: null", "base_url: http://127.0.0.1:9/v1")
    )


def run(cmd: list[str], log: Path) -> None:
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed; see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, required=True, help="a run directory with samples")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pd-topk"))
    a = ap.parse_args()
    log = a.work / "log.txt"
    a.work.mkdir(parents=True, exist_ok=True)
    sparse = a.work / "sparse-samples"
    if not (sparse / "samples.jsonl").exists():
        teacher_topk(a.samples, sparse, a.k)
    py = [sys.executable, "-m", "promptdistill"]
    results: dict[str, Any] = {}
    for name, source, extra in (
        ("full", a.samples, []),
        ("bucket", sparse, []),
        ("renorm", sparse, ["--kd-tail", "renorm"]),
    ):
        dest = a.work / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        for f in ("samples.jsonl", "config.yaml"):
            shutil.copy(source / f, dest / f)
        if (a.samples / "system-prompts").is_dir():  # samples name it by hash (#16)
            shutil.copytree(a.samples / "system-prompts", dest / "system-prompts")
        train = ["train", str(dest), "--objective", "kd", "--steps", str(a.steps), "--warmup", "2"]
        run([*py, *train, "--eval-every", "1000", "--save-every", "1000", *extra], log)
        # eval against the embedded teacher, whatever the run's (fake) endpoint says
        config = (
            (dest / "config.yaml")
            .read_text()
            .replace("base_url: http://127.0.0.1:9/v1", "base_url: null")
        )
        (dest / "config.yaml").write_text(config)
        run([*py, "eval", str(dest), "--no-judge", "--max-heldout", "40", "--max-new-tokens",
             "96", "--latency-requests", "0"], log)  # fmt: skip
        s = json.loads((dest / "report.json").read_text())["summary"]
        results[name] = {k: s.get(k) for k in ("kl_student", "kl_base", "nll_student")}
        print(name, results[name], flush=True)
    print("\n| teacher seen by kd | KL(T||student) | KL(T||base) | NLL student |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['kl_student']:.4f} | {r['kl_base']:.4f} | {r['nll_student']:.4f} |")


if __name__ == "__main__":
    main()
