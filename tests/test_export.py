"""`promptdistill export RUN --merged OUT`: a standalone model equal to base + adapter."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from tiny import make_tiny_model, write_samples

from promptdistill.core.config import DatumConfig, StudentConfig, TrainConfig
from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.export import export_merged
from promptdistill.training.run import train_run as train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_merged_export_matches_base_plus_adapter(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptdistill.models.load import load_causal_lm

    model_dir = make_tiny_model(tmp_path / "model")
    run = RunDir(tmp_path / "run").create()
    write_samples(run.samples, 60)
    cfg = TrainConfig(steps=8, lr=3e-2, batch_tokens=384, warmup=0, save_every=100)
    train(run, StudentConfig(model=str(model_dir)), DatumConfig(), cfg, Console(file=io.StringIO()))

    out = tmp_path / "merged"
    cmd = [sys.executable, "-m", "promptdistill", "export", str(run.path), "--merged", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert not (out / "adapter_config.json").exists()  # standalone: no PEFT needed

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template  # the student's chat template travels with it
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "what do you think of mozart"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    base = load_causal_lm(model_dir, dtype="fp32")
    with torch.no_grad():
        plain = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(run.file("adapter")))(ids).logits
        got = merged(ids).logits
    assert torch.allclose(got, adapted, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter changed the model

    # a second export into the same directory is refused rather than overwriting it
    with pytest.raises(UserError, match="is not an empty folder"):
        export_merged(run, out)

    # the disk fills up while the weights are written (RLIMIT_FSIZE: EFBIG, tests/fs_faults.py):
    # one line naming the target, and no half-written model left behind (issue #16)
    from fixtures_openai import one_line_error
    from fs_faults import file_size_limit

    full = tmp_path / "full" / "merged"
    cmd[-1] = str(full)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                       preexec_fn=file_size_limit(20_000),
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # fmt: skip
    line = one_line_error(r, 2)
    assert f"cannot write {full}" in line and "larger than this system allows" in line, line
    assert list(full.parent.iterdir()) == []  # neither the target nor its temp dir


def test_export_without_adapter_is_a_user_error(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    with pytest.raises(UserError, match="no trained adapter"):
        export_merged(run, tmp_path / "out")


@pytest.mark.parametrize("target", ["a file", "under a file", "read-only"])
def test_an_unwritable_target_fails_before_the_merge(tmp_path: Path, target: str) -> None:
    """`--merged` at a file or on a read-only file system was a traceback, and only after the
    whole merge (issue #16); the target is checked first."""
    import contextlib

    from fixtures_openai import one_line_error
    from fs_faults import unwritable_target

    run = RunDir(tmp_path / "run").create()
    run.adapter.mkdir()
    (run.adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/no/model"}')
    with contextlib.ExitStack() as stack:
        out, said, kept = unwritable_target(target, tmp_path, stack)
        cmd = [sys.executable, "-m", "promptdistill", "export", str(run.path), "--merged", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
        line = one_line_error(r, 2)
        assert str(out) in line and said in line, line
        assert "merging" not in r.stdout  # no model was loaded
    assert kept is None or kept.read_bytes() == b"keep me"
