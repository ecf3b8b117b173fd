"""`promptdistill export RUN --merged OUT`: fold the run's LoRA adapter into its base model.

The result is a standalone Hugging Face model directory (safetensors weights, config, tokenizer
and chat template) that `AutoModelForCausalLM.from_pretrained(OUT)` loads without PEFT, and that
any server (transformers serve, vLLM, llama.cpp after conversion) can serve without LoRA
support. The merge is done in fp32 (the base's dtype on disk), so it is exact up to rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptdistill.core.io import new_folder, writing
from promptdistill.core.rundir import RunDir


def export_merged(run: RunDir, out: Path, dtype: str = "fp32", log: Any = print) -> Path:
    """Write base + adapter, merged with `merge_and_unload`, to `out` (atomically). The target
    is checked, and its temp dir made, before the merge: a merge takes minutes, and a target
    that cannot be written must fail before them, not after (issue #16)."""

    from promptdistill.models.load import load_student, load_tokenizer

    run.require()
    adapter = run.require_adapter()
    base_name = run.trained_student().model
    with new_folder(out, "--merged") as tmp:  # checked before the merge, which takes minutes
        log(f"merging {adapter} into {base_name} ...")
        merged = load_student(base_name, adapter, dtype=dtype).merge_and_unload()
        tokenizer = load_tokenizer(base_name)
        with writing(out):  # also the OS errors safetensors wraps in its own type
            merged.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
    log(f"merged model written to {out} (load it with AutoModelForCausalLM.from_pretrained)")
    return out
