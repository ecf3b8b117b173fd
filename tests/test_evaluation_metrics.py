"""Each metric on small inputs whose values are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from promptdistill.evaluation.metrics import (
    aggregate_nll,
    answers_match,
    chrf,
    exact_match,
    extract_final_answer,
    final_answer_correct,
    mean_ci,
    normalize_answer,
    prompt_effect_recovered,
    rouge_l,
    student_t_quantile,
    token_f1,
)


def test_aggregate_nll_pools_by_tokens() -> None:
    # answers with NLL sums 2.0 (4 tokens) and 6.0 (4 tokens): 8 nats / 8 tokens = 1.0 nat/token
    s = aggregate_nll([2.0, 6.0], [4, 4])
    assert s.nll == pytest.approx(1.0)
    assert s.perplexity == pytest.approx(math.e)
    assert (s.tokens, s.answers) == (8, 2)
    # token pooling, not a mean of means: (1*1 + 9*3) / 4 = 7.0, while the mean of means is 2.0
    assert aggregate_nll([1.0, 27.0], [1, 3]).nll == pytest.approx(7.0)
    assert aggregate_nll([], []).nll is None


def test_prompt_effect_recovered() -> None:
    # base 3.0 without the prompt, 2.0 with it: a gap of 1.0; the student at 2.4 closes 0.6 of it
    assert prompt_effect_recovered(3.0, 2.4, 2.0) == pytest.approx(0.6)
    assert prompt_effect_recovered(3.0, 3.0, 2.0) == pytest.approx(0.0)
    assert prompt_effect_recovered(3.0, 1.5, 2.0) == pytest.approx(1.5)  # beyond the prompt
    assert prompt_effect_recovered(3.0, 2.4, 3.0) is None  # the prompt changed nothing
    assert prompt_effect_recovered(3.0, 2.4, None) is None  # not measurable
    assert prompt_effect_recovered(None, 2.4, 2.0) is None


def test_student_t_quantiles_match_tables() -> None:
    # two-sided 95% critical values from any t table
    assert student_t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert student_t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert student_t_quantile(0.975, 30) == pytest.approx(2.042, abs=1e-3)
    assert student_t_quantile(0.025, 10) == pytest.approx(-2.228, abs=1e-3)


def test_mean_ci_by_hand() -> None:
    # 1..5: mean 3, s = sqrt(2.5), se = sqrt(0.5) = 0.7071, t(0.975, 4) = 2.7764 -> ±1.9632
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.mean == pytest.approx(3.0)
    assert ci.lo == pytest.approx(3.0 - 1.9632, abs=1e-3)
    assert ci.hi == pytest.approx(3.0 + 1.9632, abs=1e-3)
    assert ci.method == "student-t" and ci.n == 5
    # missing values are dropped, not imputed
    assert mean_ci([4.0, None, 6.0]).mean == pytest.approx(5.0)
    assert mean_ci([4.0, None, 6.0]).n == 2
    single = mean_ci([7.0])
    assert (single.mean, single.lo, single.hi) == (7.0, None, None)
    assert mean_ci([None]).mean is None


def test_rouge_l_by_hand() -> None:
    # reference "the cat lay on the mat", prediction "the cat sat on the mat":
    # LCS = the cat on the mat = 5 of 6 words each side -> P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    assert rouge_l("a b c", "a b c") == pytest.approx(1.0)
    assert rouge_l("x y", "a b") == 0.0
    # prediction "a b" vs reference "a b c d": LCS 2, P = 1, R = 0.5 -> F = 2/3
    assert rouge_l("a b", "a b c d") == pytest.approx(2 / 3)


def test_chrf_bounds_and_order() -> None:
    assert chrf("Guten Morgen, mein Freund", "Guten Morgen, mein Freund") == pytest.approx(100.0)
    assert chrf("zzzz", "abcd") == pytest.approx(0.0)
    near = chrf("Guten Morgen, mein Freund", "Guten Abend, mein Freund")
    far = chrf("Hello there, my friend", "Guten Abend, mein Freund")
    assert 0.0 < far < near < 100.0


def test_squad_normalisation_exact_match_and_f1() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the Answer.", "answer") == 1.0
    assert exact_match("answers", "answer") == 0.0
    # pred {cat, sat}, gold {cat, sat, down}: P = 2/2, R = 2/3 -> F1 = 2*1*(2/3)/(5/3) = 0.8
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0


def test_final_answer_extraction() -> None:
    text = "Step 1: 6 × 7 = 42\nCheck: 42 ÷ 7 = 6\nFinal Answer: 42"
    assert extract_final_answer(text) == "42"
    # the last match wins (a model may restate)
    assert extract_final_answer("Final Answer: 1\nFinal Answer: 2") == "2"
    # no match: the last non-empty line
    assert extract_final_answer("so it is\n  17 apples \n\n") == "17 apples"
    assert extract_final_answer("") is None
    # a configurable pattern, with or without a group
    assert extract_final_answer("The answer is 12.", r"answer is (\d+)") == "12"
    assert extract_final_answer("#### 8", r"#### \d+") == "#### 8"


def test_final_answer_accuracy_compares_numbers_by_value() -> None:
    assert answers_match("1,234.50", "1234.5")
    assert answers_match("$12", "12")
    assert answers_match("−7", "-7")
    assert not answers_match("12.01", "12")
    assert answers_match("Paris.", "paris")
    assert not answers_match(None, "3")
    # a numeric gold against words with exactly one number: that number (a small model's "The
    # answer is 42." on its last line); two or more numbers say nothing about which is meant
    assert answers_match("The answer is 42.", "42") and answers_match("17 apples", "17")
    assert answers_match("It costs $1,250.", "1250") and not answers_match(
        "The answer is 41.", "42"
    )
    assert not answers_match("41 or 42", "42") and not answers_match("15 + 27 = 42", "42")
    assert not answers_match("forty-two", "42") and not answers_match("42 apples", "apples")
    assert final_answer_correct("Step 1: 2 + 2 = 4\nFinal Answer: 4", "4") == 1.0
    assert final_answer_correct("Step 1: 2 + 2 = 5\nFinal Answer: 5", "4") == 0.0
