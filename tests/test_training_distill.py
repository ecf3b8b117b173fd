"""The distillation objectives (issue #13): each loss against a direct, unchunked computation;
the in-process teacher against a separately loaded base model; kd and onpolicy through the CLI,
in process and against an endpoint that returns real logprobs of a tiny model; resume; errors."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_openai import start_fake_server
from fixtures_openai import cli_args, run_cli, samples, write_persona
from rich.console import Console
from tiny import SYSTEM_PROMPT, make_tiny_model, make_tiny_smollm_model, write_samples

from promptdistill.core.config import DatumConfig, StudentConfig, TrainConfig
from promptdistill.core.io import read_jsonl
from promptdistill.core.rundir import RunDir
from promptdistill.training import kl

REPO = Path(__file__).resolve().parents[1]
TINY = ["--lr", "2e-2", "--batch-tokens", "384", "--warmup", "0", "--lora-r", "8"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptdistill", *args],
        capture_output=True, text=True, cwd=REPO, timeout=timeout,
    )  # fmt: skip


def train_rows(run: RunDir) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(run.metrics) if r["type"] == "train"]


def local_run(root: Path, model: Path, n: int = 60, max_tokens: int = 6) -> RunDir:
    """Teacher samples of a run whose teacher is the tiny model itself, run locally (so the
    in-process teacher is the student's own base model), answering in at most `max_tokens`."""
    run = RunDir(root).create()
    write_samples(run.samples, n, heldout=3)
    run.save_stage_config(
        "sample",
        {
            "persona": "tiny",
            "n": n,
            "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": max_tokens},
            "teacher": {"base_url": None, "model": str(model)},
        },
    )
    return run


# --------------------------------------------------------------------------- the losses


def _direct(loss: str, h: torch.Tensor, w: torch.Tensor, t_logits: torch.Tensor,
            targets: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
            top_lp: torch.Tensor, token_lp: torch.Tensor, ce: float) -> torch.Tensor:  # fmt: skip
    """Each loss written plainly over the full (N, V) logits, for autograd to differentiate."""
    logp_s = (h @ w.T).log_softmax(-1)
    nll = -logp_s.gather(1, targets[:, None]).squeeze(1)
    if loss == "forward":
        logp_t = t_logits.log_softmax(-1)
        per = (logp_t.exp() * (logp_t - logp_s)).sum(-1) + ce * nll
    elif loss == "reverse":
        logp_t = t_logits.log_softmax(-1)
        per = (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    elif loss in ("bucket", "renorm"):
        p_t = top_lp.exp()
        logq = logp_s.gather(1, ids)
        if loss == "renorm":
            a = p_t / p_t.sum(-1, keepdim=True)
            per = (a * (a.log() - logq)).sum(-1)
        else:
            tail_t = 1 - p_t.sum(-1)
            tail_s = 1 - logq.exp().sum(-1)
            per = (p_t * (top_lp - logq)).sum(-1) + tail_t * (tail_t.log() - tail_s.log())
        per = per + ce * nll
    else:  # sampled: the surrogate whose gradient is the policy gradient
        est = (logp_s.gather(1, targets[:, None]).squeeze(1) - token_lp).detach()
        return (weights * est * logp_s.gather(1, targets[:, None]).squeeze(1)).sum()
    return (weights * per).sum()


@pytest.mark.parametrize("loss", ["forward", "reverse", "bucket", "renorm", "sampled"])
def test_each_loss_matches_a_direct_unchunked_computation(loss: str) -> None:
    torch.manual_seed(0)
    n, v, d, k, ce = 1100, 300, 16, 8, 0.3  # > two 512-position chunks
    h = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, dtype=torch.float64)
    t_logits = torch.randn(n, v, dtype=torch.float64) * 2
    targets = torch.randint(0, v, (n,))
    weights = torch.rand(n, dtype=torch.float64)
    ids = torch.stack([torch.randperm(v)[:k] for _ in range(n)])
    top_lp = t_logits.log_softmax(-1).gather(1, ids)
    token_lp = t_logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    kernel = {
        "forward": lambda: kl.forward_kl(lambda s, e: t_logits[s:e].clone(), targets, ce),
        "reverse": lambda: kl.reverse_kl(lambda s, e: t_logits[s:e].clone()),
        "bucket": lambda: kl.sparse_kl(ids, top_lp, targets, ce, "bucket"),
        "renorm": lambda: kl.sparse_kl(ids, top_lp, targets, ce, "renorm"),
        "sampled": lambda: kl.sampled_reverse_kl(token_lp, targets),
    }[loss]()
    ours, _ = kl.chunked_loss(h, w, weights, kernel)
    (g_ours,) = torch.autograd.grad(ours, h)
    ref = _direct(loss, h, w, t_logits, targets, weights, ids, top_lp, token_lp, ce)
    (g_ref,) = torch.autograd.grad(ref, h)
    if loss != "sampled":  # its value is the estimate, not the surrogate
        assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.allclose(g_ours, g_ref, rtol=1e-4, atol=1e-5)  # fp32 logits, as in training


# --------------------------------------------------------------------------- the teacher


def test_in_process_teacher_is_the_base_with_the_system_prompt(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Adapter off + cached system-prompt prefix gives the logits of a separately loaded base
    model run on the whole conversation (system prompt included), at every answer position."""
    from promptdistill.core.config import TrainConfig as TC
    from promptdistill.datums.store import prepare_datums
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_causal_lm, load_tokenizer
    from promptdistill.training.batching import collate
    from promptdistill.training.distributed import Dist
    from promptdistill.training.student import load_student
    from promptdistill.training.teacher import InProcessTeacher

    run = local_run(tmp_path / "run", tiny_model, n=12)
    renderer = Renderer(load_tokenizer(tiny_model))
    data, _ = prepare_datums(run, renderer, DatumConfig(), "tiny")
    student = load_student(StudentConfig(model=str(tiny_model), dtype="fp32"), TC(lora_r=4),
                           Dist(world=1, rank=0, device=torch.device("cpu")))  # fmt: skip
    with torch.no_grad():  # a trained-looking adapter: the teacher must not see it
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    teacher = InProcessTeacher(
        student.lm.get_decoder(), student.lm.get_output_embeddings().weight, renderer,
        SYSTEM_PROMPT, adapter_off=student.model.disable_adapter, compute=student.compute,
    )  # fmt: skip
    batch = collate(data, np.arange(len(data)), "pad")
    got = teacher.targets(batch)
    assert got.hidden_NH is not None and got.head_VH is not None
    ours_NV = got.hidden_NH @ got.head_VH.T

    base = load_causal_lm(tiny_model, "fp32")
    rows, cols = batch.rows_N.tolist(), batch.cols_N.tolist()
    expect = []
    for r, (tokens, _) in enumerate(batch.examples):
        full = teacher.prefix + tokens[teacher.skip :].tolist()  # the whole teacher rendering
        with torch.no_grad():
            logits = base(input_ids=torch.tensor([full])).logits[0]
        expect += [
            logits[len(teacher.prefix) + c - teacher.skip]
            for rr, c in zip(rows, cols, strict=True)
            if rr == r
        ]
    assert torch.allclose(ours_NV, torch.stack(expect), atol=1e-4)
    # and the prefix is exactly the system block the renderer writes for the teacher
    convo = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "hi"}]
    assert renderer.prompt(convo)[: len(teacher.prefix)] == teacher.prefix
    with torch.no_grad():  # with the adapter on, the student differs: the adapter was live
        h_on = student.lm.get_decoder()(input_ids=torch.tensor([full])).last_hidden_state
    assert not torch.allclose(h_on[0, -1] @ got.head_VH.T, logits[-1], atol=1e-3)


# --------------------------------------------------------------------------- through the CLI


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["kd", "onpolicy"])
def test_objective_trains_through_the_cli_and_resumes_exactly(
    tmp_path: Path, tiny_model: Path, objective: str
) -> None:
    args = ["--student", str(tiny_model), "--objective", objective, "--steps", "6",
            "--save-every", "3", "--eval-every", "100", "--ce-weight", "0.1",
            "--onpolicy-fraction", "0.5", *TINY]  # fmt: skip
    straight = local_run(tmp_path / "a", tiny_model)
    from promptdistill.training.run import train_run

    cfg = TrainConfig(
        steps=6, save_every=3, eval_every=100, lr=2e-2, batch_tokens=384, warmup=0, lora_r=8,
        objective=objective, ce_weight=0.1, onpolicy_fraction=0.5,
    )  # fmt: skip
    out = io.StringIO()
    console = Console(file=out, width=300)
    train_run(straight, StudentConfig(model=str(tiny_model)), DatumConfig(), cfg, console)
    assert f"objective {objective}" in out.getvalue()

    resumed = local_run(tmp_path / "b", tiny_model)
    r = cli("train", str(resumed.path), *args)
    assert r.returncode == 0, r.stderr
    for name in ("checkpoints/step-000006", "adapter"):  # a crash right after step 3's save
        shutil.rmtree(resumed.file(name))
    r = cli("train", str(resumed.path))
    assert r.returncode == 0, r.stderr
    assert "resuming from step-000003" in r.stdout
    a, b = train_rows(straight), train_rows(resumed)
    assert [x["step"] for x in b] == list(range(1, 7))
    key = "reverse_kl" if objective == "onpolicy" else "kl"
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-6), x["step"]
        assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6)
    assert resumed.stage_config("train")["train"]["objective"] == objective
    r = cli("train", str(resumed.path), "--objective", "sft", "--steps", "8")
    assert r.returncode == 2 and "--objective" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- from an endpoint


def _lm(model_dir: Path) -> tuple[Any, Any]:
    from promptdistill.models.load import load_causal_lm, load_tokenizer

    return load_causal_lm(model_dir, "fp32"), load_tokenizer(model_dir)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode not in (0, 1), result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_kd_and_onpolicy_from_an_endpoint_with_real_logprobs(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The fake endpoint answers with a tiny real model: `sample --logprobs 5` stores its top-5
    logprobs, `train --objective kd` learns from them; `--objective onpolicy` sends the
    student's answers back for vLLM-style scoring (prompt_logprobs)."""
    persona = write_persona(tmp_path / "data")
    with start_fake_server(lm=_lm(tiny_model)) as server:
        r = run_cli(cli_args(persona, tmp_path / "run", 24, server.base_url, "--logprobs", "5",
                             "--max-tokens", "6", "--no-heldout"))  # fmt: skip
        assert r.returncode == 0, r.stderr
        records = samples(tmp_path / "run")
        assert len(records) == 24 and all(len(x["logprobs"][0][2]) == 5 for x in records)
        r = cli("train", str(tmp_path / "run"), "--student", str(tiny_model), "--objective",
                "kd", "--steps", "3", *TINY)  # fmt: skip
        assert r.returncode == 0, r.stderr
        rows = train_rows(RunDir(tmp_path / "run"))
        assert len(rows) == 3 and all(x["kl"] >= 0 for x in rows)
        # --kd-tail renorm: the same top 5, renormalised instead of a sixth bucket for the rest
        r = cli("train", str(tmp_path / "run"), "--student", str(tiny_model), "--objective",
                "kd", "--kd-tail", "renorm", "--steps", "3", "--fresh", *TINY)  # fmt: skip
        assert r.returncode == 0, r.stderr
        renorm = train_rows(RunDir(tmp_path / "run"))
        assert len(renorm) == 3 and renorm[0]["kl"] != rows[0]["kl"]
        assert "kd_tail: renorm" in (tmp_path / "run" / "config.yaml").read_text()

        asked = server.requests
        r = cli("train", str(tmp_path / "run"), "--student", str(tiny_model), "--objective",
                "onpolicy", "--steps", "2", "--fresh", *TINY)  # fmt: skip
        assert r.returncode == 0, r.stderr
        rows = train_rows(RunDir(tmp_path / "run"))
        assert len(rows) == 2 and all("reverse_kl" in x for x in rows)
        assert server.requests > asked  # the endpoint scored the student's answers


@pytest.mark.slow
def test_logprob_errors_are_one_line(tmp_path: Path, tiny_model: Path) -> None:
    persona = write_persona(tmp_path / "data")
    with start_fake_server(lm=_lm(tiny_model), ignore_logprobs=True) as server:
        r = run_cli(cli_args(persona, tmp_path / "ignored", 4, server.base_url, "--logprobs", "5",
                             "--no-heldout"))  # fmt: skip
        assert r.returncode == 3 and "without the logprobs" in _one_line(r)
        r = run_cli(cli_args(persona, tmp_path / "plain", 4, server.base_url, "--no-heldout",
                             "--max-tokens", "4"))  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = cli("train", str(tmp_path / "plain"), "--student", str(tiny_model), "--objective",
                "onpolicy", "--steps", "1", *TINY)  # fmt: skip
        assert "no prompt_logprobs" in _one_line(r)
    with start_fake_server(lm=_lm(tiny_model)) as server:
        r = run_cli(cli_args(persona, tmp_path / "run", 8, server.base_url, "--logprobs", "3",
                             "--max-tokens", "4", "--no-heldout"))  # fmt: skip
        assert r.returncode == 0, r.stderr
    other = make_tiny_smollm_model(tmp_path / "smol")  # another tokenizer than the teacher's
    r = cli("train", str(tmp_path / "run"), "--student", str(other), "--objective", "kd",
            "--steps", "1", *TINY)  # fmt: skip
    assert "not the student's" in _one_line(r)
    r = run_cli([sys.executable, "-m", "promptdistill", "sample", str(persona), "--run",
                 str(tmp_path / "local"), "-n", "2", "--logprobs", "5"])  # fmt: skip
    assert "--logprobs" in _one_line(r)


def test_merged_copy_answers_as_the_student_does(tiny_model: Path) -> None:
    """The plain copy the student generates on-policy answers with has the student's current
    weights (base + LoRA), and the student's own training weights are untouched."""
    from promptdistill.core.config import TrainConfig as TC
    from promptdistill.models.load import load_causal_lm
    from promptdistill.training.distributed import Dist
    from promptdistill.training.onpolicy import MergedCopy
    from promptdistill.training.student import load_student

    student = load_student(StudentConfig(model=str(tiny_model), dtype="fp32"), TC(lora_r=4),
                           Dist(world=1, rank=0, device=torch.device("cpu")))  # fmt: skip
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {n: p.clone() for n, p in student.model.named_parameters()}
    copy = MergedCopy(student.model, load_causal_lm(tiny_model, "fp32"))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expect = student.model(input_ids=ids).logits
        got = copy.sync()(input_ids=ids).logits
    assert torch.allclose(got, expect, atol=1e-4)
    assert all(torch.equal(p, before[n]) for n, p in student.model.named_parameters())
