"""`promptdistill run` end to end on a tiny student and the fake teacher: every stage runs,
a rerun skips what is done, a partial stage resumes, and a changed configuration redoes only
what it affects, keeping the old outputs aside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_openai import start_fake_server
from fixtures_openai import cli_env, write_persona
from tiny import make_tiny_model

from promptdistill.pipeline.config import PRESETS, resolve_config
from promptdistill.pipeline.ledger import stage_fingerprints

pytestmark = pytest.mark.slow


def _run(args: list[str], data: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptdistill", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(PROMPTDISTILL_DATA=str(data), COLUMNS="200"),
    )


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    write_persona(root, "tiny", values=20, heldout=4)
    student = make_tiny_model(root / "student")
    return root, student


def test_run_end_to_end_then_skip_resume_and_redo(setup: tuple[Path, Path]) -> None:
    root, student = setup
    run = root / "runs" / "r1"
    # keep eval small: short answers, one latency probe, a small classifier training set
    cheap = root / "cheap.yaml"
    cheap.write_text(
        "eval:\n  max_new_tokens: 12\n  latency_requests: 1\n  classifier_train: 8\n"
        "  batch_size: 8\n"
    )
    with start_fake_server(answer_words=12) as server:
        common = ["--run", str(run), "--base-url", server.base_url, "--model", "fake-teacher",
                  "--student", str(student), "--steps", "4", "--max-heldout", "4",
                  "--no-judge", "--config", str(cheap)]  # fmt: skip

        # a partial sample stage, made by hand with the `sample` command
        partial = _run(["sample", "tiny", "--run", str(run), "-n", "10", "--base-url",
                        server.base_url, "--model", "fake-teacher"], root)  # fmt: skip
        assert partial.returncode == 0, partial.stderr

        # 1. the whole job: sampling resumes (only the 14 new prompts are asked), then train, eval
        first = _run(["run", "tiny", "-n", "24", *common], root)
        assert first.returncode == 0, first.stdout + first.stderr
        sampled = {p: c for p, c in server.asked.items() if p.startswith("Question")}
        assert len(sampled) == 24 and set(sampled.values()) == {1}  # nothing asked twice
        assert len(_lines(run / "samples.jsonl")) == 24 + 4  # training + held-out prompts
        assert (run / "adapter" / "adapter_config.json").exists()
        report = orjson.loads((run / "report.json").read_bytes())
        assert "prompt_effect_recovered" in report["summary"]
        assert f"promptdistill compare {run}" in first.stdout
        config = (run / "config.yaml").read_text()
        assert "sample:" in config and "train:" in config

        # 2. the same command again: every stage is up to date
        asked = dict(server.asked)
        adapter_mtime = (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
        again = _run(["run", "tiny", "-n", "24", *common], root)
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("up to date, skipped") == 3
        assert server.asked == asked
        assert (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == adapter_mtime
        # ... and by the persona's path instead of its name: the same file (issue #16)
        by_path = _run(["run", str(root / "personas" / "tiny.yaml"), "-n", "24", *common], root)
        assert by_path.returncode == 0, by_path.stderr
        assert by_path.stdout.count("up to date, skipped") == 3 and server.asked == asked

        # 3. a training flag changes: training and eval are redone, samples are kept
        changed = _run(["run", "tiny", "-n", "24", *common, "--lr", "0.002"], root)
        assert changed.returncode == 0, changed.stderr
        assert "train configuration changed" in changed.stdout
        assert all(server.asked[p] == 1 for p in sampled)  # no sample asked again
        superseded = list((run / "superseded").iterdir())
        assert len(superseded) == 1 and (superseded[0] / "adapter").is_dir()
        assert (run / "adapter" / "adapter_config.json").exists()

        # 4. a sampling setting changes: everything is redone; old samples are moved aside
        resampled = _run(["run", "tiny", "-n", "24", *common, "--lr", "0.002",
                          "--temperature", "0.1"], root)  # fmt: skip
        assert resampled.returncode == 0, resampled.stderr
        assert "sample configuration changed" in resampled.stdout
        assert all(server.asked[p] == 2 for p in sampled)  # asked again, at the new setting
        assert any((d / "samples.jsonl").exists() for d in (run / "superseded").iterdir())
        # the stored system prompt goes aside with the samples that name it
        assert any((d / "system-prompts").is_dir() for d in (run / "superseded").iterdir())
        assert len(_lines(run / "samples.jsonl")) == 28

    listing = _run(["runs", str(root / "runs")], root)
    assert listing.returncode == 0 and "r1" in listing.stdout and "report ready" in listing.stdout


def test_preset_flags_and_config_file_layering(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("train:\n  lr: 0.003\n  epochs: 3\nsample:\n  n: 50\n")
    cfg = resolve_config("beethoven", "demo", cfg_file, {"train": {"epochs": 1.0}}, {})
    assert cfg.sample.n == 50  # file over preset
    assert cfg.train.lr == 0.003  # file over defaults
    assert cfg.train.epochs == 1.0  # flag over file
    assert cfg.eval.max_heldout == PRESETS["demo"]["eval"]["max_heldout"]  # preset kept
    # throughput knobs do not change what the samples are; the sampling temperature does
    a = stage_fingerprints(cfg)
    cfg.sample.teacher.concurrency = 7
    assert stage_fingerprints(cfg)["sample"] == a["sample"]
    cfg.sample.sampling.temperature = 0.01
    assert stage_fingerprints(cfg)["sample"] != a["sample"]


def test_demo_distils_the_local_teachers_distribution_and_an_endpoints_samples() -> None:
    """The demo's kd needs the teacher's distribution: the local teacher has it; an endpoint
    sampled without --logprobs does not, so the preset trains sft there, and a user's own
    choice always stands."""
    endpoint = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}

    def objective(flags: dict[str, Any]) -> str:
        return resolve_config("beethoven", "demo", None, flags, {}).train.objective

    assert objective({}) == "kd"
    assert objective({"sample": {"teacher": endpoint}}) == "sft"
    assert objective({"sample": {"teacher": endpoint, "logprobs": 20}}) == "kd"
    assert objective({"sample": {"teacher": endpoint}, "train": {"objective": "kd"}}) == "kd"
    assert objective({"train": {"objective": "sft"}}) == "sft"


def test_bad_run_config_file_names_file_and_field(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("train:\n  lr: fast\n")
    result = _run(["run", "beethoven", "--config", str(cfg_file), "--run", str(tmp_path / "r")],
                  Path(__file__).resolve().parent.parent)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{cfg_file}:2" in result.stderr and "train.lr" in result.stderr


def test_run_batch_api_samples_through_batches_then_trains(setup: tuple[Path, Path]) -> None:
    from fake_batches import FakeBatches

    root, student = setup
    run = root / "runs" / "batched"
    cheap = root / "cheap-batch.yaml"
    cheap.write_text(
        "sample:\n  batch:\n    poll_s: 0.05\n"
        "eval:\n  max_new_tokens: 8\n  latency_requests: 0\n  classifier_train: 4\n"
    )
    with start_fake_server(answer_words=12, batches=FakeBatches()) as server:
        common = ["run", "tiny", "--run", str(run), "--base-url", server.base_url, "--model",
                  "fake-teacher", "--student", str(student), "--steps", "2", "-n", "12",
                  "--max-heldout", "4", "--no-judge", "--config", str(cheap)]  # fmt: skip
        both = _run([*common, "--batch-api", "--stream"], root)
        assert both.returncode == 2 and "--batch-api and --stream" in both.stderr
        result = _run([*common, "--batch-api"], root)
        chat_requests = len(server.arrivals)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(server.batches.created) == 1 and len(_lines(run / "samples.jsonl")) == 16
    assert (run / "batches.json").exists() and (run / "report.json").exists()
    assert chat_requests == 0  # every teacher answer came from the batch (eval: no latency probe)
