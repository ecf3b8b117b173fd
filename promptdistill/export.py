"""`promptdistill export RUN --merged OUT`: fold the run's LoRA adapter into its base model.

The result is a standalone Hugging Face model directory (safetensors weights, config, tokenizer
and chat template) that `AutoModelForCausalLM.from_pretrained(OUT)` loads without PEFT, and that
any server (transformers serve, vLLM, llama.cpp after conversion) can serve without LoRA
support. The merge is done in fp32 (the base's dtype on disk), so it is exact up to rounding.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from promptdistill.core.errors import UserError
from promptdistill.core.io import os_error, writing
from promptdistill.core.rundir import RunDir


def export_merged(run: RunDir, out: Path, dtype: str = "fp32", log: Any = print) -> Path:
    """Write base + adapter, merged with `merge_and_unload`, to `out` (atomically). The target
    is checked, and its temp dir made, before the merge: a merge takes minutes, and a target
    that cannot be written must fail before them, not after (issue #16)."""

    from promptdistill.models.load import load_student, load_tokenizer

    run.require()
    adapter = run.require_adapter()
    if out.exists() and not out.is_dir():
        raise UserError(f"--merged {out} is a file, not a directory; choose a new directory")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--merged {out}: {above} is a file, not a directory; choose another path")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new --merged directory")
    base_name = run.trained_student().model
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise os_error(e, out) from None
    try:
        log(f"merging {adapter} into {base_name} ...")
        merged = load_student(base_name, adapter, dtype=dtype).merge_and_unload()
        tokenizer = load_tokenizer(base_name)
        with writing(out):  # also the OS errors safetensors wraps in its own type
            merged.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            if out.exists():
                out.rmdir()  # checked empty above
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"merged model written to {out} (load it with AutoModelForCausalLM.from_pretrained)")
    return out
