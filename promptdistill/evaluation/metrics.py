"""Pure metric functions for `promptdistill eval`: no models, no I/O.

Every function takes plain Python values and returns plain Python values, so each can be tested
on small inputs with hand-computed answers (tests/test_metrics.py).

- Likelihood: token-weighted NLL and perplexity, and "prompt effect recovered".
- Text agreement: ROUGE-L F1 (rouge-score) and chrF (sacrebleu), one answer against one reference.
- Task metrics: SQuAD-style exact match and token F1, and final-answer accuracy (the answer
  extractor itself is core/answers.py, shared with the sampler's correctness filter).
- Intervals: the mean with a two-sided Student-t interval (scipy is not a dependency, so the
  t quantile is computed here from the regularised incomplete beta function).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# the final-answer extractor is shared with `sample --keep correct` (core/answers.py)
from promptdistill.core.answers import (  # noqa: F401
    DEFAULT_ANSWER_PATTERN,
    answers_match,
    extract_final_answer,
    final_answer_correct,
    normalize_answer,
)

# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class MeanCI:
    """A sample mean with a two-sided Student-t confidence interval (`method` says so)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int
    confidence: float = 0.95
    method: str = "student-t"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> MeanCI:
    """Mean of the non-missing values with a Student-t interval: mean ± t·s/√n.

    None values are dropped (a missing judge score is never imputed). With one value the
    interval is undefined (None); with none, the mean is None too.
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return MeanCI(None, None, None, 0, confidence)
    mean = math.fsum(xs) / n
    if n == 1:
        return MeanCI(mean, None, None, 1, confidence)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * math.sqrt(var / n)
    return MeanCI(mean, mean - half, mean + half, n, confidence)


# --------------------------------------------------------------------------- likelihood


@dataclass(frozen=True)
class NLLSummary:
    """Token-weighted NLL over many answers: sum of token NLLs / number of answer tokens, with
    a 95% interval over answers (`lo`, `hi`; None for fewer than two answers)."""

    nll: float | None
    perplexity: float | None
    tokens: int
    answers: int
    lo: float | None = None
    hi: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def aggregate_nll(
    nll_sums: Sequence[float], token_counts: Sequence[int], confidence: float = 0.95
) -> NLLSummary:
    """Pool per-answer NLL sums into one per-token NLL (nats) and its perplexity exp(NLL).

    Pooling by tokens (not averaging per-answer means) matches how the training loop's
    validation loss is computed, so the two can be compared directly. The pooled NLL is a ratio
    estimator (sum of NLLs / sum of tokens, answers as clusters); its interval is the
    delta-method one (Cochran, Sampling Techniques, 1977, 6.3) with a Student-t quantile:
    var = sum((s_i - R n_i)^2) / ((k - 1) k nbar^2).
    """
    if len(nll_sums) != len(token_counts):
        raise ValueError("nll_sums and token_counts differ in length")
    tokens = int(sum(token_counts))
    k = len(nll_sums)
    if tokens == 0:
        return NLLSummary(None, None, 0, k)
    nll = math.fsum(nll_sums) / tokens
    lo = hi = None
    if k >= 2:
        nbar = tokens / k
        resid = math.fsum((s - nll * n) ** 2 for s, n in zip(nll_sums, token_counts, strict=True))
        half = student_t_quantile(0.5 + confidence / 2.0, k - 1) * math.sqrt(
            resid / ((k - 1) * k * nbar**2)
        )
        lo, hi = nll - half, nll + half
    return NLLSummary(nll, math.exp(nll), tokens, k, lo, hi)


def prompt_effect_recovered(
    nll_base_noprompt: float | None,
    nll_student: float | None,
    nll_base_withprompt: float | None,
    min_gap: float = 1e-3,
) -> float | None:
    """(NLL_base_noprompt − NLL_student) / (NLL_base_noprompt − NLL_base_withprompt).

    1.0: the student (no prompt) explains the teacher's answers as well as the base model does
    *with* the system prompt; 0.0: no better than the base without it. It can exceed 1 (the
    student overfits the teacher's samples) or go negative. Undefined (None) when a term is
    missing or the prompt barely changes the base's NLL (|gap| < min_gap nats/token).
    """
    if nll_base_noprompt is None or nll_student is None or nll_base_withprompt is None:
        return None
    gap = nll_base_noprompt - nll_base_withprompt
    if abs(gap) < min_gap:
        return None
    return (nll_base_noprompt - nll_student) / gap


# --------------------------------------------------------------------------- text agreement


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1] (rouge-score's tokenizer: lowercase alphanumeric words, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)


def chrf(prediction: str, reference: str) -> float:
    """Sentence-level chrF (sacrebleu defaults: char 6-grams, beta 2) in [0, 100]."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(prediction, [reference]).score)


# --------------------------------------------------------------------------- task metrics


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between the normalised bags of words."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def dig(d: Any, *path: str) -> Any:
    """The value at `path` in nested dicts (a report's sections), or None where one is missing."""
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d
