"""The trainable student: a frozen base model with LoRA adapters, and its optimizer.

Precision: bf16 base weights where the hardware has bf16 (AVX512-BF16 / AMX CPUs, GPUs), fp32
LoRA weights and AdamW state (PEFT's `autocast_adapter_dtype`). AdamW with beta2 0.95 and no
weight decay (tinker-cookbook), gradient-norm clip 1.0.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from promptdistill.core.config import StudentConfig, TrainConfig
from promptdistill.training.batching import Mode
from promptdistill.training.distributed import Dist


@dataclass(kw_only=True)
class Student:
    name: str  # the student model, as the configuration names it
    model: Any  # the PeftModel
    lm: Any  # its *ForCausalLM, LoRA layers injected
    params: list[torch.nn.Parameter]  # the trainable (LoRA) parameters
    optimizer: torch.optim.Optimizer
    dtype: torch.dtype
    dist: Dist
    mode: Mode  # how batches are laid out for this model's attention kernel

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def compute(self) -> AbstractContextManager[Any]:
        """bf16 compute with fp32 LoRA master weights: under autocast the (already bf16) base
        weights are used as they are and only the small LoRA matrices are cast per forward.
        PEFT would otherwise up-cast every LoRA input to fp32 (an extra copy per adapted
        layer); autocast makes that pointless, so it is switched off. fp32 needs neither."""
        from peft.helpers import disable_input_dtype_casting

        stack = ExitStack()
        if self.dtype != torch.float32:
            stack.enter_context(disable_input_dtype_casting(self.model))
            stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
        return stack

    def optimizer_step(self, lr: float) -> torch.Tensor:
        """Average the gradients over ranks, clip, step, and clear them. Returns the gradient
        norm before clipping, as a tensor (reading it would sync; the loop reads it late)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.dist.mean_grads(self.params)
        norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def save_adapter(self, path: Path) -> None:
        self.model.save_pretrained(str(path), safe_serialization=True)


def load_student(student: StudentConfig, cfg: TrainConfig, dist: Dist) -> Student:
    from peft import LoraConfig, get_peft_model

    from promptdistill.models.load import load_causal_lm, resolve_dtype
    from promptdistill.models.resolve import resolve_model

    model_dir = resolve_model(student.model)
    dtype = resolve_dtype(student.dtype, dist.device.type)
    base = load_causal_lm(
        student.model, dtype=dtype, device=str(dist.device), quantize=student.quantize
    )
    if student.quantize == "4bit":  # QLoRA: nf4 base, frozen; norms and embeddings in fp32
        from promptdistill.models.quantize import for_training

        base = for_training(base)
    if dist.device.type == "cpu" and base.config._attn_implementation == "sdpa":
        # Measured on SmolLM2-135M, bf16, 256-token rows (docs/benchmarks.md): PyTorch's CPU
        # flash-attention kernel took ~26% of a training step, its backward above all; plain
        # matmul + softmax ("eager") took ~10%. At our row lengths the (T x T) scores are small.
        base.set_attn_implementation("eager")
    mode: Mode = "pad"
    if cfg.batching == "pack" or (
        cfg.batching == "auto" and "flash" in str(base.config._attn_implementation)
    ):
        mode = "pack"
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # PEFT accepts floats
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules
        if cfg.target_modules == "all-linear"
        else [m.strip() for m in cfg.target_modules.split(",") if m.strip()],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora, autocast_adapter_dtype=True)
    model.peft_config["default"].base_model_name_or_path = str(model_dir)
    lm: Any = model.base_model.model  # the *ForCausalLM, LoRA layers injected
    lm.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # weight decay 0: LoRA's B starts at zero and decay would only pull it back (tinker: AdamW,
    # beta2 0.95, no decay). foreach is the fast multi-tensor path on CPU and GPU alike.
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, foreach=True
    )
    return Student(
        name=student.model, model=model, lm=lm, params=params, optimizer=optimizer, dtype=dtype,
        dist=dist, mode=mode,
    )  # fmt: skip
