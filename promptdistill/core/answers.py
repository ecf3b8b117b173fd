"""Final answers: what `eval` scores and `sample --keep correct` filters on (issue #17).

The answer after the last match of an answer pattern (default `Final Answer: N`), compared with
a gold answer: numbers by value, anything else after SQuAD normalisation. One extractor for the
sampler and the evaluation, so a teacher trace kept as correct is one eval would score correct.
"""

from __future__ import annotations

import re
import string

DEFAULT_ANSWER_PATTERN = r"Final Answer:\s*(.+)"


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def extract_final_answer(text: str, pattern: str = DEFAULT_ANSWER_PATTERN) -> str | None:
    """The answer after the *last* match of `pattern` (group 1 if it has one, else the match),
    falling back to the last non-empty line. None for an empty text."""
    matches = list(re.finditer(pattern, text, flags=re.IGNORECASE | re.MULTILINE))
    if matches:
        m = matches[-1]
        found = m.group(1) if m.re.groups else m.group(0)
        return found.strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


_NUMBER = re.compile(r"^[-+−]?\d+(?:\.\d+)?$")


def _as_number(text: str) -> float | None:
    """'1,234.50', '$12', '45%', '−7.' -> a float; anything else -> None."""
    t = text.strip().rstrip(".").replace(",", "").replace("$", "").replace("%", "").strip()
    t = t.replace("−", "-")
    if not _NUMBER.match(t):
        return None
    return float(t)


_NUMBERS = re.compile(r"[-+−]?\$?\d[\d,]*(?:\.\d+)?%?")


def _only_number(text: str) -> float | None:
    """The value of the one number in `text` ("The answer is 42." -> 42.0); None when it holds
    none or several ("41 or 42", "15 + 27 = 42": which one is meant is not said)."""
    found = _NUMBERS.findall(text)
    return _as_number(found[0].rstrip(",")) if len(found) == 1 else None


def answers_match(extracted: str | None, gold: str) -> bool:
    """Numbers compare by value (to 1e-6), everything else by SQuAD normalisation. Against a
    numeric gold, an answer in words with exactly one number in it ("The answer is 42.", "17
    apples") is that number: a small model often writes the answer so instead of on the
    pattern's line, and the last line is what is extracted then."""
    if extracted is None:
        return False
    a, b = _as_number(extracted), _as_number(gold)
    if a is None and b is not None:
        a = _only_number(extracted)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return normalize_answer(extracted) == normalize_answer(gold)


def final_answer_correct(text: str, gold: str, pattern: str = DEFAULT_ANSWER_PATTERN) -> float:
    return float(answers_match(extract_final_answer(text, pattern), gold))
