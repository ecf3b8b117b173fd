"""The persona classifier, before and after (issue #13): can it tell teacher from base at all?

For each evaluated run given, on the same answers in one process:
- `minilm, 48`: the classifier until 2026-12-02 (MiniLM embeddings only, L2 1e-2, the first 48
  training prompts);
- `minilm, all`: the same on every training prompt (up to eval's `classifier_train`);
- `words+minilm, 48` and `words+minilm, all`: evaluation/classifier.py as it is now (hashed word
  1-2-grams beside the embeddings, L2 by cross-validation over prompts).
Each is scored by its cross-validated accuracy on the training prompts (both answers to a prompt
in one fold), and on the run's held-out answers (RUN/report-answers.jsonl): the share of the
teacher's, the base's and the student's (sampled) answers it places with the teacher. A good
classifier has a high teacher share and a low base share; `T-B` is their gap.

The base's answers to the training prompts are made here (sampled, seed 0, as eval's), once
per persona's samples, and cached beside them. Runs come from benchmarks/objectives.py:

    .venv/bin/python benchmarks/classifier.py \
        /tmp/pd-objectives/nimbus-support/kd-bt1024-seed{0,1,2} \
        /tmp/pd-objectives/beethoven/kd-bt1024-seed{0,1,2}
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

VARIANTS = ("minilm, 48", "minilm, all", "words+minilm, 48", "words+minilm, all")
COLUMNS = (  # the table's columns after the training prompts: CV accuracy, T, B, T-B, S, S/T
    lambda r: r["cv"],
    lambda r: r["shares"]["teacher"],
    lambda r: r["shares"]["base"],
    lambda r: r["shares"]["teacher"] - r["shares"]["base"],
    lambda r: r["shares"]["student"],
    lambda r: r["shares"]["student"] / max(r["shares"]["teacher"], 1e-9),
)


def base_train_answers(run: Path, train: list[Any], sampling: Any) -> dict[str, str]:
    """The base model's sampled answers to the run's training prompts (the teacher's sampling
    settings, as eval's), cached per samples."""
    from promptdistill.evaluation.local import Answering, user
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_causal_lm, load_tokenizer

    cache = run.parent / "base-train-answers.json"
    known: dict[str, str] = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [i for i in train if i.id not in known]
    if todo:
        model = load_causal_lm("smollm2-135m", dtype="auto").eval()
        answer = Answering(
            renderer=Renderer(load_tokenizer("smollm2-135m")), max_new_tokens=96,
            temperature=sampling.temperature, top_p=sampling.top_p, seed=0, batch_size=24,
        )  # fmt: skip
        for item, a in zip(todo, answer(model, [user(i.prompt) for i in todo], True), strict=True):
            known[item.id] = a.text
        cache.write_text(json.dumps(known))
    return known


def minilm_only(
    teacher: list[str], base: list[str], heldout: dict[str, list[str]]
) -> dict[str, Any]:
    """The classifier as it was: embeddings, L2 1e-2; cross-validated with the same folds."""
    import torch

    from promptdistill.evaluation.classifier import Embedder, LogisticRegression, cross_validated

    emb = Embedder()
    x_ND = emb.encode(teacher + base).double()
    y_N = torch.cat([torch.ones(len(teacher)), torch.zeros(len(base))]).double()
    fold_N = torch.cat([torch.arange(len(teacher)), torch.arange(len(base))]) % 5
    clf = LogisticRegression(l2=1e-2).fit(x_ND, y_N)
    shares = {m: float((clf.predict_proba(emb.encode(t)) > 0.5).double().mean())
              for m, t in heldout.items()}  # fmt: skip
    return {"cv": cross_validated(x_ND, y_N, fold_N, 1e-2), "shares": shares}


def measure(run: Path) -> dict[str, dict[str, Any]]:
    from promptdistill.core.config import EvalConfig
    from promptdistill.evaluation.classifier import persona_shares
    from promptdistill.evaluation.inputs import load_inputs

    cfg = EvalConfig()
    inputs = load_inputs(run, cfg)
    train = inputs.train[: cfg.classifier_train]
    base = base_train_answers(run, train, inputs.sample.sampling)
    rows = [json.loads(x) for x in (run / "report-answers.jsonl").read_text().splitlines() if x]
    heldout = {
        "teacher": [r["teacher"] for r in rows],
        "base": [r["base_sampled"] for r in rows],
        "student": [r["student_sampled"] for r in rows],
    }
    out: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        items = train[:48] if variant.endswith("48") else train
        teacher_t, base_t = [i.teacher for i in items], [base[i.id] for i in items]
        if variant.startswith("minilm"):
            out[variant] = minilm_only(teacher_t, base_t, heldout)
        else:
            r = persona_shares(teacher_t, base_t, heldout)
            out[variant] = {"cv": r.cv_accuracy, "shares": r.shares, "l2": r.l2}
        out[variant]["n"] = len(items)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="evaluated run directories")
    a = ap.parse_args()
    by_persona: dict[str, list[dict[str, dict[str, Any]]]] = {}
    for run in a.runs:
        res = measure(run)
        by_persona.setdefault(run.parent.name, []).append(res)
        for v, r in res.items():
            s = r["shares"]
            print(f"{run}  {v:18s} n {r['n']:3d}  cv {r['cv']:.2f}  T {s['teacher']:.3f} "
                  f"B {s['base']:.3f} S {s['student']:.3f}", flush=True)  # fmt: skip
    for persona, results in by_persona.items():
        print(f"\n{persona}: median [min, max] over {len(results)} runs")
        print("| classifier | train prompts | CV accuracy | T | B | T-B | S | S/T |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for v in VARIANTS:
            cells = [str(results[0][v]["n"])]
            for column in COLUMNS:
                vals = [column(r[v]) for r in results]
                cells.append(f"{statistics.median(vals):.2f} [{min(vals):.2f}, {max(vals):.2f}]")
            print(f"| {v.split(',')[0]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
