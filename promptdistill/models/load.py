"""Loading local models and tokenizers: safetensors only, never remote code.

`load_student` is the base model with a trained LoRA adapter on top (eval, compare, export);
`load_causal_lm` a plain model. The compute dtype is bf16 where the hardware has native bf16
(CUDA, or a CPU with AVX512-BF16 / AMX), else fp32. torch and transformers are imported inside
the functions, so `promptdistill --help` stays fast.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptdistill.core.errors import UserError
from promptdistill.models.resolve import resolve_model

if TYPE_CHECKING:
    import torch


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """The tokenizer (with chat template) of a model name, directory or hub id."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from {path}: {e}") from e


def cpu_supports_bf16() -> bool:
    """True if this CPU has native bf16 matmuls (AVX512-BF16 or AMX), where bf16 is ~2.5x
    faster than fp32 for LoRA training (measured, see DEVELOPERS.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        import torch

        return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


DTYPE_NAMES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
}


def dtype_name(dtype: str = "auto", device: str = "cpu") -> str:
    """'auto' | 'bf16' | 'fp32' | ... -> a torch dtype name, without importing torch.

    'auto' is bf16 on CUDA or on a CPU with native bf16, else fp32.
    """
    if dtype == "auto":
        if device.startswith("cuda") or (device == "cpu" and cpu_supports_bf16()):
            return "bfloat16"
        return "float32"
    if dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    raise UserError(f"unknown dtype '{dtype}'; use auto, bf16 or fp32")


def resolve_dtype(dtype: torch.dtype | str = "auto", device: str = "cpu") -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    result: torch.dtype = getattr(torch, dtype_name(dtype, device))
    return result


def load_student(
    name_or_path: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    dtype: torch.dtype | str = "auto",
    device: str = "cpu",
    quantize: str = "none",
) -> Any:
    """The base model with a trained LoRA adapter on top (PEFT, unmerged), in eval mode."""
    from peft import PeftModel

    base = load_causal_lm(name_or_path, dtype, device=device, quantize=quantize)
    try:
        student = PeftModel.from_pretrained(base, str(adapter), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(
            f"cannot load the adapter {adapter} onto {name_or_path}: "
            f"{' '.join(str(e).split())[:300]}"
        ) from None
    student.eval()
    return student


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype | str = "auto",
    device: str = "cpu",
    quantize: str = "none",
) -> Any:
    """A causal LM from safetensors only (never pickle), without remote code, in eval mode;
    `quantize` "4bit": its linear layers in nf4, computed in `dtype` (models/quantize.py)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    if not any(path.glob("*.safetensors")):
        raise UserError(
            f"{path} has no *.safetensors weights; promptdistill never loads pickle (.bin) "
            f"weights: re-save the model with save_pretrained(safe_serialization=True)"
        )
    torch_dtype = resolve_dtype(dtype, device)
    quiet_transformers()
    if quantize == "4bit":
        from promptdistill.models.quantize import load_4bit

        model_4bit: Any = load_4bit(path, torch_dtype, device)  # placed on `device` already
        model_4bit.eval()
        return model_4bit
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype, trust_remote_code=False, use_safetensors=True
        )
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a causal LM from {path}: {e}") from e
    model.to(device)
    model.eval()
    return model


def model_info(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a user wants to know about a model dir, without loading any weights."""
    path = resolve_model(name_or_path)
    config = json.loads((path / "config.json").read_text())
    n_params = 0
    for st in path.glob("*.safetensors"):
        with open(st, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for key, meta in header.items():
            if key != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= d
                n_params += count
    return {
        "path": str(path),
        "architecture": (config.get("architectures") or ["?"])[0],
        "parameters": n_params,
        "vocab_size": config.get("vocab_size"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "chat_template": (path / "chat_template.jinja").is_file()
        or "chat_template" in _read_json(path / "tokenizer_config.json"),
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def quiet_transformers() -> None:
    """No progress bars and no deprecation notes from transformers and PEFT on the user's
    terminal: they would break up our one-line messages and live displays."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=FutureWarning, module="peft")
