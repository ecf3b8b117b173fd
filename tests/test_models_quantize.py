"""`--quantize 4bit` (QLoRA, issue #17) on CPU with a tiny model, through the CLI: it trains,
resumes exactly, its adapter is a plain PEFT adapter that loads on the fp32 base, and
`export --merged` dequantises the nf4 base before merging."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import make_tiny_model, write_samples

from promptdistill.core.io import read_jsonl
from promptdistill.core.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("bitsandbytes")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptdistill", *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip


def losses(run: RunDir) -> dict[int, tuple[float, float]]:
    rows = read_jsonl(run.metrics)
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows if r["type"] == "train"}


@pytest.mark.slow
def test_4bit_student_trains_resumes_exactly_and_loads_on_the_fp32_base(tmp_path: Path) -> None:
    from peft import PeftModel

    from promptdistill.models.load import load_causal_lm, load_student

    model = make_tiny_model(tmp_path / "model", hidden=64)
    run = RunDir(tmp_path / "run").create()
    write_samples(run.samples, 60, heldout=2)
    args = ["--student", str(model), "--quantize", "4bit", "--steps", "6", "--save-every", "3",
            "--eval-every", "3", "--lr", "2e-2", "--batch-tokens", "384", "--warmup", "0",
            "--lora-dropout", "0.1"]  # fmt: skip
    out = cli("train", str(run.path), *args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4-bit nf4 base (double quantised), bfloat16 compute" in out.stdout
    assert "Traceback" not in out.stderr and "kernels-community" not in out.stderr
    straight = losses(run)
    assert sorted(straight) == list(range(1, 7))
    vals = [r["val_loss"] for r in read_jsonl(run.metrics) if r["type"] == "eval"]
    assert len(vals) == 3 and min(vals[1:]) < vals[0]  # it learns (validation at 0, 3, 6)
    assert run.stage_config("train")["student"]["quantize"] == "4bit"

    # a crash after the step-3 checkpoint: the rest is redone exactly as before
    shutil.copytree(run.adapter, tmp_path / "adapter-straight")
    for name in ("checkpoints/step-000006", "adapter"):
        shutil.rmtree(run.file(name))
    out = cli("train", str(run.path), "--quantize", "none")
    assert out.returncode == 2 and "--quantize 4bit, not none" in out.stderr
    out = cli("train", str(run.path))  # the run's own settings, 4-bit included
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from step-000003" in out.stdout
    resumed = losses(run)
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), step

    # a plain PEFT adapter: fp32 LoRA weights, no trace of the quantisation, and it loads with
    # PeftModel onto the unquantised fp32 base
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "quant" not in json.dumps(config).lower()
    from safetensors.torch import load_file

    weights = load_file(str(run.adapter / "adapter_model.safetensors"))
    assert weights and all(w.dtype == torch.float32 for w in weights.values())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    base = load_causal_lm(model, "fp32")
    with torch.no_grad():
        before = base(ids).logits
        on_fp32 = PeftModel.from_pretrained(base, str(run.adapter))(ids).logits
    assert not torch.allclose(before, on_fp32, atol=1e-3)  # trained, and applied

    # export --merged: the nf4 base dequantised, then merged; it answers like the 4-bit student
    out = cli("export", str(run.path), "--merged", str(tmp_path / "merged"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trained in 4-bit (nf4): dequantising it to fp32 first" in out.stdout
    merged: Any = load_causal_lm(tmp_path / "merged", "fp32")
    assert "quantization_config" not in json.loads((tmp_path / "merged/config.json").read_text())
    student = load_student(model, run.adapter, "bf16", quantize="4bit")
    with torch.no_grad():
        as_trained = student(ids).logits.float()
        exported = merged(ids).logits
    assert torch.allclose(exported, as_trained, atol=0.03), (exported - as_trained).abs().max()
    # ... closer to it than the fp32 base with the adapter, which lacks the nf4 rounding
    assert (exported - as_trained).abs().mean() < (on_fp32 - as_trained).abs().mean()


def test_4bit_needs_block_sized_layers_on_cpu(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "model")  # hidden 32: below the 64-value block
    run = RunDir(tmp_path / "run").create()
    write_samples(run.samples, 8)
    out = cli("train", str(run.path), "--student", str(model), "--quantize", "4bit")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "hidden_size 32" in out.stderr and "multiples of 64" in out.stderr
    assert "Traceback" not in out.stderr
    out = cli("train", str(run.path), "--student", str(model), "--quantize", "8bit")
    assert out.returncode == 2 and "--quantize 8bit: use none or 4bit" in out.stderr


def test_gradients_through_the_4bit_base_stay_right_after_a_validation_pass(
    tmp_path: Path,
) -> None:
    """bitsandbytes repacks a CPU 4-bit weight for inference at its first no-grad eval-mode
    forward, after which its kernel has no backward (models/quantize.py): the trainer's base
    must give the LoRA layers the gradients of its dequantised weights, validation or not."""
    from peft import LoraConfig, get_peft_model

    from promptdistill.models.load import load_causal_lm
    from promptdistill.models.quantize import dequantized, for_training

    model_dir = make_tiny_model(tmp_path / "model", hidden=64)
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))

    def lora_grads(base: Any, validate_first: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(base, lora)
        if validate_first:
            model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(input_ids=ids)
            model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}

    # the reference: the same nf4 values as plain bf16 weights, norms in fp32 as for_training
    plain = dequantized(load_causal_lm(model_dir, "bf16", quantize="4bit"))
    for p in plain.parameters():
        p.requires_grad_(False)
        if p.dim() == 1:
            p.data = p.data.float()
    ref = lora_grads(plain, validate_first=False)
    got = lora_grads(for_training(load_causal_lm(model_dir, "bf16", quantize="4bit")), True)
    first = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    for name in (first, *list(ref)[-2:]):  # the first layer's gradients pass through them all
        error = float((got[name] - ref[name]).norm() / ref[name].norm())
        assert error < 0.15, (name, error)  # bf16 rounding; the repacked kernel gave ~0.6


def quantized_run(root: Path, hidden: int, quantize: str, base_url: str) -> RunDir:
    """A run as `sample` and `train` leave it, its student trained with `--quantize` as given."""
    from fixtures_openai import write_persona
    from peft import LoraConfig, get_peft_model

    from promptdistill.models.load import load_causal_lm

    model = make_tiny_model(root / "model", hidden=hidden)
    run = RunDir(root / "run").create()
    write_samples(run.samples, 8, heldout=3, words=(1, 3))
    persona = write_persona(root / "data")
    run.save_stage_config("sample", {
        "persona": str(persona), "n": 8,
        "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 6, "seed": 1},
        "teacher": {"base_url": base_url, "model": "fake-teacher"},
    })  # fmt: skip
    student = {"model": str(model), "dtype": "bf16", "quantize": quantize}
    run.save_stage_config("train", {"student": student})
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load_causal_lm(model, "fp32"), lora).save_pretrained(run.adapter)
    return run


@pytest.mark.slow
def test_eval_and_compare_load_a_4bit_student_as_it_was_trained(tmp_path: Path) -> None:
    from fake_openai import start_fake_server

    with start_fake_server() as server:
        run = quantized_run(tmp_path, 64, "4bit", server.base_url)
        out = cli("eval", str(run.path), "--no-judge", "--latency-requests", "0",
                  "--max-new-tokens", "4")  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Traceback" not in out.stderr and "kernels-community" not in out.stderr
        report = json.loads(run.report_json.read_text())
        assert report["efficiency"]["student_dtype"] == "nf4 (bfloat16 compute)"
        # the base parameters counted by their unpacked shape, not by the packed nf4 bytes
        fp32 = sum(p.numel() for p in load_fp32(run).parameters())
        assert report["efficiency"]["base_parameters"] == fp32
        out = cli("compare", str(run.path), "--prompt", "Who are you?")
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.startswith("[teacher]") and out.stdout.split("[student]\n")[1].strip()
        assert "Traceback" not in out.stderr and "kernels-community" not in out.stderr


def load_fp32(run: RunDir) -> Any:
    from promptdistill.models.load import load_causal_lm

    return load_causal_lm(run.trained_student().model, "fp32")


@pytest.mark.slow
def test_quantize_flag_reaches_eval_compare_and_export(tmp_path: Path) -> None:
    """--quantize 4bit on a student trained unquantised: each command loads it in 4-bit (here
    a hidden-32 model, which bitsandbytes' CPU kernels refuse: a one-line error says so)."""
    from fake_openai import start_fake_server
    from fixtures_openai import one_line_error

    with start_fake_server() as server:
        run = quantized_run(tmp_path, 32, "none", server.base_url)
        commands = (
            ("eval", str(run.path), "--no-judge", "--latency-requests", "0"),
            ("compare", str(run.path), "--prompt", "Who are you?"),
            ("export", str(run.path), "--merged", str(tmp_path / "merged")),
        )
        for args in commands:
            line = one_line_error(cli(*args, "--quantize", "4bit"), 2)
            assert "hidden_size 32" in line and "multiples of 64" in line, (args, line)
            line = one_line_error(cli(*args, "--quantize", "int8"), 2)
            assert "--quantize int8: use none or 4bit" in line, args
    assert not (tmp_path / "merged").exists() and not run.report_json.exists()
