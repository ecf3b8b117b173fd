"""Session-wide test setup shared by every test module.

PROMPTDISTILL_HOME points at a persistent, git-ignored cache in the repo (`.cache/test-home`), so
the one-time GGUF -> safetensors conversion of the embedded model (about a minute on 2 cores)
happens once per machine, not once per test or per session. Subprocesses (the CLI, `transformers
serve`) inherit it through the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_HOME = REPO / ".cache" / "test-home"


def pytest_configure(config: pytest.Config) -> None:
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    os.environ["PROMPTDISTILL_HOME"] = str(TEST_HOME)
    # No test may reach the hub: there is no network in CI, and a hang there is worse than a miss.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def test_home() -> Path:
    return TEST_HOME


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded default model as a converted Hugging Face directory (converted once)."""
    from promptdistill.models import resolve_model

    return resolve_model("smollm2-135m")
