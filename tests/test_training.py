"""The trainer: loss, batching, a few steps drive the loss down, checkpoint/resume equivalence
(through the real CLI), Ctrl-C, and the adapter loading with PeftModel."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from rich.console import Console
from tiny import make_tiny_model, write_samples

from promptdistill.core.config import DatumConfig, StudentConfig, TrainConfig
from promptdistill.core.io import read_jsonl
from promptdistill.core.rundir import RunDir
from promptdistill.datums.store import prepare_datums
from promptdistill.models.chat import Renderer
from promptdistill.training.batching import collate, epoch_batches
from promptdistill.training.objectives import NextTokenNLL, WeightedNLL, forward_loss
from promptdistill.training.run import train_run as train

REPO = Path(__file__).resolve().parents[1]
# fast, clearly-learning settings for the tiny model
TINY = ["--lr", "2e-2", "--batch-tokens", "384", "--warmup", "0", "--lora-r", "8"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def new_run(tmp_path: Path, n: int = 150) -> RunDir:
    run = RunDir(tmp_path / "run").create()
    write_samples(run.samples, n, heldout=3)
    return run


def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptdistill", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        **kw,
    )


def train_losses(run: RunDir) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in read_jsonl(run.file("metrics.jsonl")) if r["type"] == "train"
    }


def test_chunked_weighted_nll_matches_cross_entropy() -> None:
    torch.manual_seed(0)
    h = torch.randn(2500, 16, dtype=torch.float64, requires_grad=True)  # > one 1024 chunk
    head = torch.randn(300, 16, dtype=torch.float64)
    targets = torch.randint(0, 300, (2500,))
    weights = torch.rand(2500, dtype=torch.float64)
    ours = WeightedNLL.apply(h, head, targets, weights.float())
    (g_ours,) = torch.autograd.grad(ours, h)
    ref = (F.cross_entropy(h @ head.T, targets, reduction="none") * weights.float()).sum()
    (g_ref,) = torch.autograd.grad(ref, h)
    assert torch.allclose(ours.double(), ref.double(), rtol=1e-5)
    assert torch.allclose(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_batches_are_a_pure_function_of_seed_and_epoch() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 300, 500)
    idx = np.arange(500)
    a = epoch_batches(lengths, idx, 2048, seed=3, epoch=1)
    assert [x.tolist() for x in a] == [x.tolist() for x in epoch_batches(lengths, idx, 2048, 3, 1)]
    assert [x.tolist() for x in a] != [x.tolist() for x in epoch_batches(lengths, idx, 2048, 3, 2)]
    assert sorted(np.concatenate(a).tolist()) == idx.tolist()  # every example once per epoch
    assert all(len(b) * lengths[b].max() <= 2048 for b in a)  # padded size within budget
    padded = sum(len(b) * lengths[b].max() for b in a)
    assert padded < 1.1 * lengths.sum()  # bucketing keeps padding small
    packed = epoch_batches(lengths, idx, 2048, 3, 1, mode="pack")
    assert all(lengths[b].sum() <= 2048 for b in packed)


@pytest.mark.slow
def test_packed_and_padded_batches_give_the_same_loss(tmp_path: Path, tiny_model: Path) -> None:
    """Padding-free packing (position_ids, block-diagonal attention) and unmasked right padding
    compute the same weighted NLL as running each example alone."""
    from promptdistill.models.load import load_causal_lm, load_tokenizer

    run = new_run(tmp_path, 12)
    data, _ = prepare_datums(run, Renderer(load_tokenizer(tiny_model)), DatumConfig(), "tiny")
    lm = load_causal_lm(tiny_model, dtype="fp32")
    idx = np.arange(len(data))
    for attention in ("sdpa", "eager"):  # the trainer uses eager on CPU
        lm.set_attn_implementation(attention)
        with torch.no_grad():
            alone = sum(
                float(forward_loss(lm, collate(data, idx[i : i + 1], "pad"), NextTokenNLL()).total)
                for i in idx
            )
            padded = float(forward_loss(lm, collate(data, idx, "pad"), NextTokenNLL()).total)
            packed = float(forward_loss(lm, collate(data, idx, "pack"), NextTokenNLL()).total)
        assert padded == pytest.approx(alone, rel=1e-4), attention
        assert packed == pytest.approx(alone, rel=1e-4), attention


@pytest.mark.slow
def test_a_few_steps_drive_the_loss_down(tmp_path: Path, tiny_model: Path) -> None:
    run = new_run(tmp_path)
    out = io.StringIO()
    cfg = TrainConfig(
        steps=25, lr=2e-2, batch_tokens=384, warmup=0, lora_r=8, eval_every=10, save_every=100
    )
    res = train(
        run, StudentConfig(model=str(tiny_model)), DatumConfig(), cfg, Console(file=out, width=200)
    )
    losses = train_losses(run)
    assert res.steps == 25 and sorted(losses) == list(range(1, 26))
    assert np.mean([losses[s] for s in range(21, 26)]) < np.mean([losses[s] for s in range(1, 6)])
    evals = [r["val_loss"] for r in read_jsonl(run.file("metrics.jsonl")) if r["type"] == "eval"]
    assert len(evals) == 4 and evals[-1] < evals[0]  # steps 0, 10, 20 and the end
    assert (run.file("loss.png").read_bytes()[:4]) == b"\x89PNG"
    assert "done: 25 steps" in out.getvalue()
    stage = run.stage_config("train")
    assert stage is not None and stage["train"]["lora_r"] == 8
    assert stage["student"]["model"] == str(tiny_model)


def test_adapter_loads_with_peft(tmp_path: Path, tiny_model: Path) -> None:
    from peft import PeftModel

    from promptdistill.models.load import load_causal_lm

    run = new_run(tmp_path, 60)
    train(
        run,
        StudentConfig(model=str(tiny_model)),
        DatumConfig(),
        TrainConfig(steps=6, lr=2e-2, batch_tokens=384, warmup=0, save_every=100),
        Console(file=io.StringIO()),
    )
    adapter = run.file("adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter.iterdir()
    }
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model.resolve())
    assert config["r"] == 16 and config["peft_type"] == "LORA"
    base = load_causal_lm(tiny_model, dtype="fp32")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, str(adapter))
        after = model(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)  # the adapter is trained and applied


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, tiny_model: Path) -> None:
    args = [
        "--student",
        str(tiny_model),
        "--steps",
        "10",
        "--save-every",
        "5",
        "--eval-every",
        "100",
        "--lora-dropout",
        "0.1",
        *TINY,
    ]
    straight = new_run(tmp_path / "a")  # uninterrupted, in-process (same code path)
    cfg = TrainConfig(
        steps=10,
        save_every=5,
        eval_every=100,
        lora_dropout=0.1,
        lr=2e-2,
        batch_tokens=384,
        warmup=0,
        lora_r=8,
    )
    train(
        straight,
        StudentConfig(model=str(tiny_model)),
        DatumConfig(),
        cfg,
        Console(file=io.StringIO()),
    )

    resumed = new_run(tmp_path / "b")
    r = cli("train", str(resumed.path), *args)
    assert r.returncode == 0, r.stderr
    # simulate a crash right after the step-5 checkpoint: later state is gone
    for name in ("checkpoints/step-000010", "adapter"):
        import shutil

        shutil.rmtree(resumed.file(name))
    r = cli("train", str(resumed.path))  # no flags: the run's own settings are reused
    assert r.returncode == 0, r.stderr
    assert "resuming from step-000005" in r.stdout
    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(b) == list(range(1, 11))
    for step in range(1, 11):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step
    # so are the gradient norms the dashboard plots (issue #17)
    norms = [
        {r["step"]: r["grad_norm"] for r in read_jsonl(x.metrics) if r["type"] == "train"}
        for x in (straight, resumed)
    ]
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)
    from safetensors.torch import load_file

    wa = load_file(str(straight.file("adapter/adapter_model.safetensors")))
    wb = load_file(str(resumed.file("adapter/adapter_model.safetensors")))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resumes(tmp_path: Path, tiny_model: Path) -> None:
    run = new_run(tmp_path)
    args = [
        "--student",
        str(tiny_model),
        "--steps",
        "5000",
        "--save-every",
        "10000",
        "--eval-every",
        "10000",
        "--schedule",
        "constant",
        *TINY,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptdistill", "train", str(run.path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(train_losses(run)) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted at step" in out and "resume with `promptdistill train" in out
    ckpts = sorted(p.name for p in run.file("checkpoints").iterdir())
    assert len(ckpts) == 1 and ckpts[0].startswith("step-")
    stopped = int(ckpts[0].removeprefix("step-"))
    assert stopped >= 3 and max(train_losses(run)) == stopped

    r = cli("train", str(run.path), "--steps", str(stopped + 3))
    assert r.returncode == 0, r.stderr
    assert f"resuming from step-{stopped:06d}" in r.stdout
    assert sorted(train_losses(run)) == list(range(1, stopped + 4))
    assert run.file("adapter/adapter_model.safetensors").exists()


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path: Path, tiny_model: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    r = cli("train", str(run.path), "--student", str(tiny_model))
    assert r.returncode == 2 and "samples.jsonl does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    write_samples(run.samples, 0, heldout=4)
    r = cli("train", str(run.path), "--student", str(tiny_model))
    assert r.returncode == 2 and "no usable training samples" in r.stderr


def test_resume_refuses_a_changed_lora_setup(tmp_path: Path, tiny_model: Path) -> None:
    from promptdistill.core.errors import UserError
    from promptdistill.training.run import resolve_configs

    run = new_run(tmp_path, 40)
    cfg = TrainConfig(steps=4, save_every=2, lr=2e-2, batch_tokens=384, warmup=0)
    train(
        run, StudentConfig(model=str(tiny_model)), DatumConfig(), cfg, Console(file=io.StringIO())
    )
    student, datum, resumed = resolve_configs(run, {"train": {"steps": 8}})
    assert resumed.batch_tokens == 384 and student.model == str(tiny_model)  # saved flags reused
    with pytest.raises(UserError, match="--lora-r"):
        train(
            run,
            student,
            datum,
            resumed.model_copy(update={"lora_r": 4}),
            Console(file=io.StringIO()),
        )


@pytest.mark.slow
def test_two_processes_train_data_parallel_on_cpu(tmp_path: Path, tiny_model: Path) -> None:
    """The README's multi-GPU command, on CPU: torchrun starts 2 ranks (gloo), one adapter."""
    run = new_run(tmp_path, n=60)
    with socket.socket() as s:  # a free port for the ranks to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        "-m", "promptdistill", "train", str(run.path),
        "--student", str(tiny_model), "--steps", "4", "--batch-tokens", "256",
    ]  # fmt: skip
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("done: 4 steps") == 1  # only rank 0 reports and writes
    assert sorted(train_losses(run)) == [1, 2, 3, 4]
    assert (run.file("adapter") / "adapter_model.safetensors").exists()
    config = run.stage_config("train")
    assert config is not None and config["world_size"] == 2


# --------------------------------------------------------------------------- issue #16


@pytest.fixture(scope="module")
def smol_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with SmolLM2's real tokenizer: its BPE can fail the prefix check."""
    from tiny import make_tiny_smollm_model

    return make_tiny_smollm_model(tmp_path_factory.mktemp("smol") / "model")


def _answer(record: dict[str, Any], text: str) -> bytes:
    record["messages"][-1]["content"] = text
    return orjson.dumps(record) + b"\n"


@pytest.mark.slow
def test_bad_samples_are_skipped_counted_and_named_not_fatal(
    tmp_path: Path, smol_tiny: Path
) -> None:
    """Empty and whitespace-only answers, an answer whose rendering fails the prefix check,
    and lines that are not records: each skipped and counted, the training goes on."""
    run = RunDir(tmp_path / "run").create()
    records = write_samples(run.file("good.jsonl"), 40)
    lines = [orjson.dumps(r) + b"\n" for r in records]
    lines[3] = _answer(records[3], "")
    lines[4] = _answer(records[4], "   \n ")
    lines[5] = _answer(records[5], "\n\nAh, a blank line first!")  # "\n\n" merges: no prefix
    lines[6:6] = [b"[1, 2]\n", b'{"id": "x", "messages": "oops"}\n']
    run.samples.write_bytes(b"".join(lines))
    r = cli("train", str(run.path), "--student", str(smol_tiny), "--steps", "2", *TINY)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    said = " ".join(r.stdout.split())
    assert "2 empty" in said
    prefix = "1 skipped (their rendered prompt is not a token prefix of the conversation: "
    assert f"{prefix}'{records[5]['id']}')" in said
    lines_said = (
        f"skipped 2 lines of samples that are not a sample record: {run.samples}:7: a JSON "
        f"list, not a record (an object); {run.samples}:8: 'messages' is not a list"
    )
    assert "".join(lines_said.split()) in "".join(said.split()), said  # wrapped at 80 columns
    stats = json.loads(run.file("datums/stats.json").read_text())
    assert stats["examples"] == 40 - 3 and stats["empty"] == 2 and stats["prefix_failed"] == 1
    assert run.file("adapter/adapter_config.json").exists()


def test_most_records_failing_the_prefix_check_refuse_the_template(
    tmp_path: Path, smol_tiny: Path
) -> None:
    run = RunDir(tmp_path / "run").create()
    records = write_samples(run.file("good.jsonl"), 6)
    lines = [_answer(r, "\n\nBlank first.") if i < 4 else orjson.dumps(r) + b"\n"
             for i, r in enumerate(records)]  # fmt: skip
    run.samples.write_bytes(b"".join(lines))
    r = cli("train", str(run.path), "--student", str(smol_tiny), "--steps", "1", *TINY)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, r.stderr
    assert "is not prefix-stable: for 4 of 6 samples (first: " in errors[0]
    assert repr(records[0]["id"]) in errors[0] and "ChatML" in errors[0]


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume_keeps_every_step(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The step of a checkpoint was logged one step late, so a kill between the checkpoint and
    the next step lost its metrics line for good (issue #16)."""
    run = new_run(tmp_path)
    args = ["--student", str(tiny_model), "--steps", "5000", "--save-every", "1", "--eval-every",
            "3", "--schedule", "constant", *TINY]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptdistill", "train", str(run.path), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(train_losses(run)) < 4:
        assert proc.poll() is None, "train exited early"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # wherever it is: mid-step, mid-checkpoint, between them
    proc.wait()
    from promptdistill.training.checkpoint import checkpoint_dirs

    last = int(checkpoint_dirs(run)[-1].name.removeprefix("step-"))
    assert set(range(1, last + 1)) <= set(train_losses(run))  # on disk before the checkpoint
    r = cli("train", str(run.path), "--steps", str(last + 3))
    assert r.returncode == 0, r.stderr
    assert sorted(train_losses(run)) == list(range(1, last + 4))  # each step once
    evals = [m["step"] for m in read_jsonl(run.file("metrics.jsonl")) if m["type"] == "eval"]
    assert sorted(set(evals)) == evals  # each validation once ...
    assert all(s in evals for s in range(0, last + 1, 3))  # ... and none lost


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_line_and_a_rerun_goes_on(
    tmp_path: Path, tiny_model: Path
) -> None:
    """RLIMIT_FSIZE makes a write past the limit fail with EFBIG, as a full disk would
    (tests/fs_faults.py): one line naming the file, no traceback; a rerun trains."""
    from fs_faults import file_size_limit

    run = new_run(tmp_path, 60)
    args = ["train", str(run.path), "--student", str(tiny_model), "--steps", "4",
            "--save-every", "2", *TINY]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    full = cli(*args, preexec_fn=file_size_limit(20_000), env=env)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stdout + full.stderr
    errors = [line for line in full.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, full.stderr
    assert str(run.path) in errors[0] and "larger than this system allows" in errors[0]
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert sorted(train_losses(run)) == [1, 2, 3, 4]
