"""The datums of a run as ragged numpy arrays, and their files in RUN/datums/.

`datums.safetensors` holds the arrays (flat tokens + weights + offsets + split per example),
`index.json` the ids, `stats.json` the counts, and `fingerprint.json` the hash of samples.jsonl +
datum config + student tokenizer. The directory is built beside the target and renamed into
place, and rebuilt only when the fingerprint changes.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptdistill.core.config import DatumConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_json, replace_dir, writing
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader
from promptdistill.datums.build import SPLITS, Datum, build_datums
from promptdistill.models.chat import Renderer

DATA_FILE = "datums.safetensors"
FORMAT_VERSION = 2  # 2: empty and looping teacher answers are dropped (issue #13)


@dataclass(kw_only=True)
class Datums:
    """All examples of a run, as ragged numpy arrays (what the trainer reads)."""

    tokens: np.ndarray  # int32 [total]
    weights: np.ndarray  # float32 [total]
    offsets: np.ndarray  # int64 [n + 1]; example i is tokens[offsets[i]:offsets[i+1]]
    split: np.ndarray  # uint8 [n]; index into SPLITS
    ids: list[str]
    stats: dict[str, Any] = field(default_factory=dict)
    # the endpoint's top-K logprobs (sample --logprobs K), aligned with `tokens`: row i is its
    # distribution over tokens[i]; ids -1 where there is none (prompt tokens)
    top_ids: np.ndarray | None = None  # int32 [total, K]
    top_logp: np.ndarray | None = None  # float16 [total, K]

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def indices(self, split: str) -> np.ndarray:
        return np.nonzero(self.split == SPLITS.index(split))[0]

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], self.weights[a:b]


def tokenizer_fingerprint(renderer: Renderer) -> str:
    """Changes when the student's tokenizer or chat template does (the same bytes as before
    the layout change of issue #12, so old checkpoints still resume)."""
    tok = renderer.tokenizer
    return f"{tok.chat_template}{len(tok)}"


def fingerprint(
    samples: Path, cfg: DatumConfig, renderer: Renderer, model_name: str, keep: str = "all"
) -> str:
    """Changes whenever the datums would: the samples file, the datum config, the tokenizer,
    the sampler's keep rule."""
    h = hashlib.sha256()
    with samples.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(cfg.model_dump_json().encode())
    h.update(model_name.encode())
    h.update(tokenizer_fingerprint(renderer).encode())
    h.update(str(FORMAT_VERSION).encode())
    if keep != "all":  # only then: the datums of earlier runs keep their fingerprints
        h.update(f"keep:{keep}".encode())
    return h.hexdigest()


def to_arrays(datums: list[Datum], stats: dict[str, Any]) -> Datums:
    lengths = np.array([len(d.tokens) for d in datums], dtype=np.int64)
    offsets = np.zeros(len(datums) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat_t = [t for d in datums for t in d.tokens]
    flat_w = [w for d in datums for w in d.weights]
    top_ids = top_logp = None
    k = max((len(row) for d in datums for row in d.top_ids or []), default=0)
    if k:  # every datum has them (build_datums keeps only such datums when some do)
        top_ids = np.full((len(flat_t), k), -1, dtype=np.int32)
        top_logp = np.zeros((len(flat_t), k), dtype=np.float16)
        for d, start in zip(datums, offsets[:-1].tolist(), strict=True):
            for j, (ids, lps) in enumerate(zip(d.top_ids or [], d.top_logp or [], strict=True)):
                top_ids[start + j, : len(ids)] = ids
                top_logp[start + j, : len(lps)] = lps
    return Datums(
        tokens=np.asarray(flat_t, dtype=np.int32),
        weights=np.asarray(flat_w, dtype=np.float32),
        offsets=offsets,
        split=np.asarray([SPLITS.index(d.split) for d in datums], dtype=np.uint8),
        ids=[d.id for d in datums],
        stats=stats,
        top_ids=top_ids,
        top_logp=top_logp,
    )


def save_datums(out_dir: Path, data: Datums, fp: str) -> None:
    """Write the datums directory atomically: build beside it, then rename into place."""
    with writing(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _save_arrays(tmp, data, fp, out_dir)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_arrays(tmp: Path, data: Datums, fp: str, out_dir: Path) -> None:
    from safetensors.numpy import save_file

    with writing(out_dir):  # a full disk: one line naming RUN/datums (issue #16)
        arrays = {
            "tokens": data.tokens,
            "weights": data.weights,
            "offsets": data.offsets,
            "split": data.split,
        }
        if data.top_ids is not None and data.top_logp is not None:
            arrays |= {"top_ids": data.top_ids, "top_logp": data.top_logp}
        save_file(
            arrays,
            str(tmp / DATA_FILE),
            metadata={"format_version": str(FORMAT_VERSION)},
        )
        atomic_write_json(
            tmp / "index.json", {"ids": data.ids, "split": [SPLITS[s] for s in data.split]}
        )
        atomic_write_json(tmp / "stats.json", data.stats)
        atomic_write_json(tmp / "fingerprint.json", {"fingerprint": fp})  # written last


def load_datums(out_dir: Path) -> Datums:
    import orjson
    from safetensors.numpy import load_file

    arrays = load_file(str(out_dir / DATA_FILE))
    index = orjson.loads((out_dir / "index.json").read_bytes())
    stats = orjson.loads((out_dir / "stats.json").read_bytes())
    return Datums(
        tokens=arrays["tokens"],
        weights=arrays["weights"],
        offsets=arrays["offsets"],
        split=arrays["split"],
        ids=list(index["ids"]),
        stats=stats,
        top_ids=arrays.get("top_ids"),
        top_logp=arrays.get("top_logp"),
    )


def _stored_fingerprint(out_dir: Path) -> str | None:
    import orjson

    try:
        return str(orjson.loads((out_dir / "fingerprint.json").read_bytes())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare_datums(
    run: RunDir, renderer: Renderer, cfg: DatumConfig, model_name: str
) -> tuple[Datums, bool]:
    """The run's datums, rebuilt only if samples.jsonl, the config or the tokenizer changed.
    Returns (datums, rebuilt)."""
    samples = run.samples
    if not samples.exists():
        raise UserError(
            f"{samples} does not exist; run `promptdistill sample` to collect teacher answers first"
        )
    out_dir = run.datums
    keep = run.sample_keep()
    fp = fingerprint(samples, cfg, renderer, model_name, keep)
    if _stored_fingerprint(out_dir) == fp:
        return load_datums(out_dir), False
    reader = SampleReader(samples)
    datums, stats = build_datums(reader.records(), renderer, cfg, model_name, keep=keep)
    # lines that are not sample records were skipped; the datums line says where (issue #16)
    stats["skipped_lines"], stats["skipped_first"] = len(reader.skipped), reader.skipped[:3]
    if stats["train"]["examples"] == 0:
        wrong = f", {stats['incorrect']} wrong (--keep correct)" if stats["incorrect"] else ""
        raise UserError(
            f"{samples} has no usable training samples ({stats['records']} records, "
            f"{stats['heldout_skipped']} held out, {stats['invalid']} invalid, "
            f"{stats['empty']} empty, {stats['loops']} looping, "
            f"{stats['dropped']} over --max-len {cfg.max_len}{wrong}); sample more with "
            f"`promptdistill sample`"
        )
    data = to_arrays(datums, stats)
    save_datums(out_dir, data, fp)
    return data, True
