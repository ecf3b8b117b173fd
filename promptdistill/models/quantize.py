"""`--quantize 4bit`: the student's base weights in 4-bit NormalFloat (QLoRA, issue #17).

QLoRA (Dettmers et al. 2023, arXiv 2305.14314): the frozen base is stored in nf4 with double
quantisation (the per-block scales quantised too, ~0.37 bits/parameter saved), computed in bf16,
and LoRA adapters train in full precision on top. bitsandbytes (the optional `quantize` extra)
does the nf4 storage and matmuls, on CUDA and, since 0.46, on CPU; PEFT's
`prepare_model_for_kbit_training` freezes the base and keeps norms and embeddings in fp32.

The adapter is an ordinary PEFT LoRA adapter: it loads on the unquantised base as well (that
base differs from the trained one by the nf4 rounding). `export --merged` therefore dequantises
the nf4 base first, to the values training saw, and merges into those.

On CPU (bitsandbytes 0.50, AVX512-BF16), a 4-bit layer's first forward in eval mode without
gradients (a validation pass) repacks its weight into an inference layout, and from then on
every forward takes a kernel with no backward: the gradients that flow through the base to
the LoRA layers below would be silently wrong (torch only warns). `for_training` therefore
switches that repacking off on every 4-bit layer; it is inference-only. The repacked layout is
also one `dequantize()` does not read back, so a base is dequantised right after loading
(`dequantized`). Its CPU kernels need layer widths that are multiples of the 64-value block.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from promptdistill.core.errors import UserError

if TYPE_CHECKING:
    import torch

Quantize = Literal["none", "4bit"]
BLOCK = 64  # bitsandbytes' 4-bit block size (values per scale)


def require_bitsandbytes(flag: str = "--quantize 4bit") -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"{flag} needs bitsandbytes: pip install 'promptdistill[quantize]' "
            "(or pip install bitsandbytes)"
        )
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # see cli/app.py


def check_4bit(name: str) -> None:
    """`--quantize 4bit` on a student trained without it (eval, compare, export), checked before
    any work: bitsandbytes installed and, on a machine without CUDA, the model's widths."""
    import torch

    from promptdistill.models.resolve import resolve_model

    require_bitsandbytes()
    check_widths(resolve_model(name), "cuda" if torch.cuda.is_available() else "cpu")


def check_widths(model_dir: Path, device: str) -> None:
    """On CPU: every linear layer's input width a multiple of the 4-bit block (a one-line
    error instead of bitsandbytes' reshape error at the first forward)."""
    if not device.startswith("cpu"):
        return
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size"):
        width = config.get(key)
        if isinstance(width, int) and width % BLOCK:
            raise UserError(
                f"--quantize 4bit: {model_dir} has {key} {width}, and bitsandbytes' CPU 4-bit "
                f"kernels need multiples of {BLOCK}; train this model without --quantize"
            )


def bnb_config(compute_dtype: torch.dtype) -> Any:
    """nf4, double quantisation, compute in `compute_dtype` (bf16 where the hardware has it)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_4bit(path: Path, compute_dtype: torch.dtype, device: str) -> Any:
    """The causal LM at `path` (safetensors, no remote code) with nf4 linear layers."""
    from transformers import AutoModelForCausalLM

    require_bitsandbytes()
    check_widths(path, device)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path),
            quantization_config=bnb_config(compute_dtype),
            dtype=compute_dtype,
            device_map={"": device},
            trust_remote_code=False,
            use_safetensors=True,
        )
    except (OSError, ValueError, ImportError) as e:
        raise UserError(f"cannot load {path} in 4-bit: {' '.join(str(e).split())[:300]}") from e


def for_training(model: Any) -> Any:
    """PEFT's preparation of a k-bit base: every base parameter frozen, the non-quantised ones
    (norms, embeddings, the head) in fp32. No gradient checkpointing: it trades ~30% more
    compute for activation memory, and at our token budgets the weights dominate memory.
    The CPU inference repacking is switched off (module note): validation passes must leave
    the layers trainable."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes' Linear4bit
            module.support_avx512bf16_for_cpu = False
    return model


def dequantized(model: Any) -> Any:
    """A freshly loaded 4-bit model with plain linear layers holding its nf4 values, in its
    compute dtype (load it with fp32 compute for export). Before any forward: see above."""
    return model.dequantize()
