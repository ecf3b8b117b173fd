"""Teacher conversations -> training examples ("datums"): token ids plus per-token loss weights.

This is the step that removes the system prompt (Askell et al. 2021, arXiv 2112.00861; Snell et
al. 2022, arXiv 2209.15189): the teacher answered *with* the persona prompt, the student is trained
to give the same answer *without* it. The shape follows tinker-cookbook's
`supervised/data.py: conversation_to_datum` with `TrainOnWhat.ALL_ASSISTANT_MESSAGES`.

Choices, each tested in tests/test_datums.py:
- Every system message is stripped, then user and assistant turns are rendered with the
  STUDENT's chat template. If that template injects a default system prompt when none is given
  (SmolLM2's does: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"), the
  student sees that default here at train time, and it sees it again at inference, where the
  same template renders a conversation without a system message. Train and inference therefore
  match token for token; the persona is learnt on top of the model's default prompt.
- Weight 0 on every prompt token. Weight 1 on each assistant turn's tokens up to and including
  its end-of-turn token (`<|im_end|>` for ChatML), so the student learns to stop (TRL warns when
  that token is masked). The newline the template writes *after* `<|im_end|>` is weight 0:
  generation stops at the end-of-turn token, so the student never has to produce it.
- A teacher answer cut off by max_tokens (`truncated`) is kept, but its end-of-turn token is
  weight 0: the teacher did not choose to stop there, and the student must not learn to.
- Prefix check: for each assistant turn, the rendered prompt (add_generation_prompt=True) must be
  a token prefix of the rendered conversation; otherwise the weights would point at the wrong
  tokens, and we refuse the template with a UserError naming the model.
- Examples longer than `max_len` are cut from the right (`truncate`) or dropped (`drop`).
- Train/validation split by a hash of the record id: stable as samples are added. Records whose
  sampler split is "heldout" are never used here (they are the evaluation set).

Storage (RUN/datums/): `datums.safetensors` holds the ragged arrays (flat tokens + weights +
offsets + split per example), `index.json` the ids, `stats.json` the counts, and
`fingerprint.json` the hash of samples.jsonl + datum config + student tokenizer. The directory is
built beside the target and renamed into place, and rebuilt only when the fingerprint changes.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptdistill.config import DatumConfig
from promptdistill.errors import UserError
from promptdistill.store import RunDir, atomic_write_json, read_jsonl, replace_dir

DATUMS_DIR = "datums"
DATA_FILE = "datums.safetensors"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class Datum:
    """One training example. `weights[i]` is the loss weight of predicting `tokens[i]`."""

    id: str
    split: str  # "train" | "val"
    tokens: list[int]
    weights: list[float]
    truncated: bool = False


@dataclass
class Datums:
    """All examples of a run, as ragged numpy arrays (what the trainer reads)."""

    tokens: np.ndarray  # int32 [total]
    weights: np.ndarray  # float32 [total]
    offsets: np.ndarray  # int64 [n + 1]; example i is tokens[offsets[i]:offsets[i+1]]
    split: np.ndarray  # uint8 [n]; index into SPLITS
    ids: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def indices(self, split: str) -> np.ndarray:
        return np.nonzero(self.split == SPLITS.index(split))[0]

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], self.weights[a:b]


# --------------------------------------------------------------------------- one conversation


def split_of(record_id: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of ids, else 'train'. Depends on the id alone, so an
    example never changes split when more samples are added."""
    # the first 32 bits of sha256(id), as a fraction of 2**32 (evaluate.py uses the same rule)
    h = int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16)
    return "val" if h / 2**32 < val_fraction else "train"


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt
    )
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(t) for t in ids]


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: EOS and, if the vocabulary has it, <|im_end|>."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return ids


def conversation_to_datum(
    messages: list[dict[str, Any]],
    tokenizer: Any,
    *,
    record_id: str = "",
    split: str = "train",
    teacher_truncated: bool = False,
    model_name: str = "the student",
) -> Datum:
    """Strip system messages, render with the student's template, weight every assistant turn.

    Raises UserError if the template is not prefix-stable, ValueError for an unusable record.
    """
    convo = [
        {"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"
    ]
    if not convo or convo[-1]["role"] != "assistant":
        raise ValueError("conversation does not end with an assistant message")
    end_ids = end_of_turn_ids(tokenizer)
    tokens: list[int] = []
    weights: list[float] = []
    last_assistant = max(i for i, m in enumerate(convo) if m["role"] == "assistant")
    for i, m in enumerate(convo):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, convo[:i], generation_prompt=True)
        full = _render(tokenizer, convo[: i + 1], generation_prompt=False)
        if full[: len(prompt)] != prompt or prompt[: len(tokens)] != tokens:
            raise UserError(
                f"the chat template of {model_name} is not prefix-stable: the rendered prompt is "
                f"not a token prefix of the rendered conversation (record {record_id!r}), so the "
                f"loss mask cannot be placed; use a student whose chat template renders turns "
                f"by concatenation (e.g. ChatML)"
            )
        # prompt tokens (including earlier turns already weighted above) keep their weights
        weights += [0.0] * (len(prompt) - len(tokens))
        tokens = list(prompt)
        reply = full[len(prompt) :]
        # weight the reply up to and including its last end-of-turn token; what the template
        # appends after it (a newline) is never generated, so it carries no loss
        ends = [j for j, t in enumerate(reply) if t in end_ids]
        stop = ends[-1] + 1 if ends else len(reply)
        reply_weights = [1.0] * stop + [0.0] * (len(reply) - stop)
        if teacher_truncated and i == last_assistant and ends:
            reply_weights[ends[-1]] = 0.0  # the teacher was cut off, it did not stop
        tokens += reply
        weights += reply_weights
    if not any(weights):
        raise ValueError("no loss-bearing tokens")
    return Datum(id=record_id, split=split, tokens=tokens, weights=weights)


def system_tokens_removed(tokenizer: Any, system: str) -> int:
    """How many fewer prompt tokens the student sees than the teacher did, for one system
    prompt: rendered with it minus rendered without it (net of any injected default)."""
    user = [{"role": "user", "content": "x"}]
    with_system = _render(tokenizer, [{"role": "system", "content": system}, *user], False)
    return len(with_system) - len(_render(tokenizer, user, False))


# --------------------------------------------------------------------------- the whole run


def fingerprint(samples: Path, cfg: DatumConfig, tokenizer: Any, model_name: str) -> str:
    """Changes whenever the datums would: the samples file, the datum config, the tokenizer."""
    h = hashlib.sha256()
    with samples.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(cfg.model_dump_json().encode())
    h.update(model_name.encode())
    h.update(str(tokenizer.chat_template).encode())
    h.update(str(len(tokenizer)).encode())
    h.update(str(FORMAT_VERSION).encode())
    return h.hexdigest()


def build_datums(
    records: Iterable[dict[str, Any]], tokenizer: Any, cfg: DatumConfig, model_name: str
) -> tuple[list[Datum], dict[str, Any]]:
    """Turn sampler records into datums, with the stats the user sees."""
    datums: list[Datum] = []
    seen: set[str] = set()
    removed_cache: dict[str, int] = {}
    removed: list[int] = []
    counts = {
        "records": 0,
        "heldout_skipped": 0,
        "duplicates": 0,
        "invalid": 0,
        "truncated": 0,
        "dropped": 0,
        "teacher_truncated": 0,
    }
    for r in records:
        counts["records"] += 1
        if r.get("split") == "heldout":
            counts["heldout_skipped"] += 1
            continue
        rid = str(r.get("id", ""))
        if rid in seen:
            counts["duplicates"] += 1
            continue
        seen.add(rid)
        messages = r.get("messages") or []
        teacher_cut = bool(r.get("truncated") or r.get("finish_reason") == "length")
        try:
            d = conversation_to_datum(
                messages,
                tokenizer,
                record_id=rid,
                split=split_of(rid, cfg.val_fraction),
                teacher_truncated=teacher_cut,
                model_name=model_name,
            )
        except (ValueError, KeyError, TypeError):
            counts["invalid"] += 1
            continue
        counts["teacher_truncated"] += teacher_cut
        if len(d.tokens) > cfg.max_len:
            if cfg.overlong == "drop" or not any(d.weights[: cfg.max_len]):
                counts["dropped"] += 1
                continue
            d.tokens, d.weights, d.truncated = (
                d.tokens[: cfg.max_len],
                d.weights[: cfg.max_len],
                True,
            )
            counts["truncated"] += 1
        systems = "\n".join(m["content"] for m in messages if m.get("role") == "system")
        if systems not in removed_cache:
            removed_cache[systems] = system_tokens_removed(tokenizer, systems) if systems else 0
        removed.append(removed_cache[systems])
        datums.append(d)
    stats: dict[str, Any] = {**counts, "examples": len(datums)}
    for split in SPLITS:
        part = [d for d in datums if d.split == split]
        stats[split] = {
            "examples": len(part),
            "tokens": sum(len(d.tokens) for d in part),
            "loss_tokens": int(sum(sum(d.weights) for d in part)),
            "truncated": sum(d.truncated for d in part),
        }
    stats["tokens"] = stats["train"]["tokens"] + stats["val"]["tokens"]
    stats["loss_tokens"] = stats["train"]["loss_tokens"] + stats["val"]["loss_tokens"]
    stats["system_tokens_removed_mean"] = round(float(np.mean(removed)), 2) if removed else 0.0
    stats["max_len"], stats["overlong"] = cfg.max_len, cfg.overlong
    stats["val_fraction"] = cfg.val_fraction
    return datums, stats


def to_arrays(datums: list[Datum], stats: dict[str, Any]) -> Datums:
    lengths = np.array([len(d.tokens) for d in datums], dtype=np.int64)
    offsets = np.zeros(len(datums) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat_t = [t for d in datums for t in d.tokens]
    flat_w = [w for d in datums for w in d.weights]
    return Datums(
        tokens=np.asarray(flat_t, dtype=np.int32),
        weights=np.asarray(flat_w, dtype=np.float32),
        offsets=offsets,
        split=np.asarray([SPLITS.index(d.split) for d in datums], dtype=np.uint8),
        ids=[d.id for d in datums],
        stats=stats,
    )


def save_datums(out_dir: Path, data: Datums, fp: str) -> None:
    """Write the datums directory atomically: build beside it, then rename into place."""
    from safetensors.numpy import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file(
            {
                "tokens": data.tokens,
                "weights": data.weights,
                "offsets": data.offsets,
                "split": data.split,
            },
            str(tmp / DATA_FILE),
            metadata={"format_version": str(FORMAT_VERSION)},
        )
        atomic_write_json(
            tmp / "index.json", {"ids": data.ids, "split": [SPLITS[s] for s in data.split]}
        )
        atomic_write_json(tmp / "stats.json", data.stats)
        atomic_write_json(tmp / "fingerprint.json", {"fingerprint": fp})  # written last
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_datums(out_dir: Path) -> Datums:
    import orjson
    from safetensors.numpy import load_file

    arrays = load_file(str(out_dir / DATA_FILE))
    index = orjson.loads((out_dir / "index.json").read_bytes())
    stats = orjson.loads((out_dir / "stats.json").read_bytes())
    return Datums(
        arrays["tokens"],
        arrays["weights"],
        arrays["offsets"],
        arrays["split"],
        list(index["ids"]),
        stats,
    )


def _stored_fingerprint(out_dir: Path) -> str | None:
    import orjson

    try:
        return str(orjson.loads((out_dir / "fingerprint.json").read_bytes())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare_datums(
    run: RunDir, tokenizer: Any, cfg: DatumConfig, model_name: str
) -> tuple[Datums, bool]:
    """The run's datums, rebuilt only if samples.jsonl, the config or the tokenizer changed.
    Returns (datums, rebuilt)."""
    samples = run.samples
    if not samples.exists():
        raise UserError(
            f"{samples} does not exist; run `promptdistill sample` to collect teacher answers first"
        )
    out_dir = run.file(DATUMS_DIR)
    fp = fingerprint(samples, cfg, tokenizer, model_name)
    if _stored_fingerprint(out_dir) == fp:
        return load_datums(out_dir), False
    datums, stats = build_datums(read_jsonl(samples), tokenizer, cfg, model_name)
    if stats["train"]["examples"] == 0:
        raise UserError(
            f"{samples} has no usable training samples ({stats['records']} records, "
            f"{stats['heldout_skipped']} held out, {stats['invalid']} invalid, "
            f"{stats['dropped']} over --max-len {cfg.max_len}); sample more with "
            f"`promptdistill sample`"
        )
    data = to_arrays(datums, stats)
    save_datums(out_dir, data, fp)
    return data, True
