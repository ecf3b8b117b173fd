"""`promptdistill export RUN --merged OUT`: fold the run's LoRA adapter into its base model.

The result is a standalone Hugging Face model directory (safetensors weights, config, tokenizer
and chat template) that `AutoModelForCausalLM.from_pretrained(OUT)` loads without PEFT, and that
any server (transformers serve, vLLM, llama.cpp after conversion) can serve without LoRA
support. The merge is done in fp32 (the base's dtype on disk), so it is exact up to rounding.

A student trained with `--quantize 4bit` learnt its adapter on the nf4 base: that base is
dequantised to fp32 first and the adapter merged into it, so the merged model is the one
trained and evaluated (merging into the 4-bit layers would requantise the sum, and merging into
the original weights would drop the nf4 rounding the adapter adapted to). Issue #17.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptdistill.core.errors import UserError
from promptdistill.core.io import new_folder, writing
from promptdistill.core.rundir import RunDir


def export_merged(
    run: RunDir,
    out: Path,
    dtype: str = "fp32",
    log: Any = print,
    quantize: str | None = None,
) -> Path:
    """Write base + adapter, merged with `merge_and_unload`, to `out` (atomically). The target
    is checked, and its temp dir made, before the merge: a merge takes minutes, and a target
    that cannot be written must fail before them, not after (issue #16). `quantize`: the base
    the adapter goes onto, "4bit" (dequantised) or "none"; None: the one it was trained on."""

    from promptdistill.models.load import load_student, load_tokenizer

    run.require()
    adapter = run.require_adapter()
    student = run.trained_student()
    base_name = student.model
    in_4bit = (quantize or student.quantize) == "4bit"
    if in_4bit and student.quantize != "4bit":
        from promptdistill.models.quantize import check_4bit

        check_4bit(base_name)
    with new_folder(out, "--merged") as tmp:  # checked before the merge, which takes minutes
        if in_4bit:
            log(
                f"{base_name} was trained in 4-bit (nf4): dequantising it to {dtype} first, "
                f"then merging {adapter} into the weights it was trained on ..."
            )
            merged = _merge_dequantized(base_name, adapter, dtype)
        else:
            log(f"merging {adapter} into {base_name} ...")
            merged = load_student(base_name, adapter, dtype=dtype).merge_and_unload()
        tokenizer = load_tokenizer(base_name)
        with writing(out):  # also the OS errors safetensors wraps in its own type
            merged.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
    log(f"merged model written to {out} (load it with AutoModelForCausalLM.from_pretrained)")
    return out


def _merge_dequantized(base_name: str, adapter: Path, dtype: str) -> Any:
    from peft import PeftModel

    from promptdistill.models.load import load_causal_lm
    from promptdistill.models.quantize import dequantized

    base = dequantized(load_causal_lm(base_name, dtype, quantize="4bit"))  # computed in `dtype`
    try:
        student = PeftModel.from_pretrained(base, str(adapter), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"cannot load the adapter {adapter} onto {base_name}: {e}") from None
    return student.merge_and_unload()
