"""The inputs of `promptdistill eval`: the run's configs, its samples and the held-out set.

The held-out set is the validation split (by the trainer's own rule, `split_of`, so no
validation prompt was trained on) plus the prompt set's fixed held-out prompts, which the sampler
marks `split: heldout` and training never sees. Train-split answers are kept apart: the persona
classifier learns from them, and never from the answers it scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptdistill.core.config import DatumConfig, EvalConfig, SampleConfig, StudentConfig
from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader, skipped_note
from promptdistill.datums.build import split_of

# --------------------------------------------------------------------------- inputs


@dataclass(kw_only=True)
class Item:
    """One answered prompt from samples.jsonl."""

    id: str
    split: str  # "train", "validation" or "heldout"
    category: str
    prompt: str
    system: str
    teacher: str
    gold: str | None
    usage: dict[str, Any]
    truncated: bool = False
    # every (user, teacher answer) turn of a multi-turn sample (`sample --turns K`); the first
    # is (prompt, teacher), which every single-turn number is about
    turns: list[tuple[str, str]] = field(default_factory=list)

    @staticmethod
    def from_sample(rec: dict[str, Any], split: str) -> Item | None:
        messages = rec.get("messages") or []
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        user = next((m["content"] for m in messages if m.get("role") == "user"), None)
        answer = next((m["content"] for m in messages if m.get("role") == "assistant"), None)
        if user is None or not answer:
            return None
        turns: list[tuple[str, str]] = []
        convo = [m for m in messages if m.get("role") in ("user", "assistant")]
        for a, b in zip(convo, convo[1:], strict=False):
            if a["role"] == "user" and b["role"] == "assistant" and b.get("content"):
                turns.append((str(a["content"]), str(b["content"])))
        truncated = bool(rec.get("truncated"))
        reasons = rec.get("finish_reasons")
        if len(turns) > 1 and isinstance(reasons, list) and reasons:
            truncated = reasons[0] == "length"  # `truncated` is about the last answer
        return Item(
            id=str(rec["id"]),
            split=split,
            category=str(rec.get("category") or ""),
            prompt=user,
            system=system,
            teacher=answer,
            gold=rec.get("gold"),
            usage=rec.get("usage") or {},
            truncated=truncated,
            turns=turns,
        )


@dataclass(kw_only=True)
class RunInputs:
    run: RunDir
    sample: SampleConfig
    student: StudentConfig
    val_fraction: float
    samples: list[dict[str, Any]]
    heldout: list[Item]
    train: list[Item]
    adapter: Path
    notes: dict[str, str] = field(default_factory=dict)


def _stage(run: RunDir, name: str, model: type[Any], required: bool) -> Any:
    data = run.stage_config(name)
    if data is None:
        if required:
            raise UserError(
                f"{run.config_path} has no '{name}' section: run `promptdistill {name}` first"
            )
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:  # pydantic's message is long; keep the first error
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{run.config_path}: {name}.{loc}: {first['msg']}") from None


def _val_fraction(run: RunDir) -> float:
    for stage in ("datums", "train"):
        data = run.stage_config(stage) or {}
        for key in ("val_fraction",):
            if key in data:
                return float(data[key])
        for sub in ("datums", "datum"):
            if isinstance(data.get(sub), dict) and "val_fraction" in data[sub]:
                return float(data[sub]["val_fraction"])
    return float(DatumConfig.model_fields["val_fraction"].default)


def _stable_order(ids: Sequence[str], seed: int) -> list[str]:
    """A seeded order of ids that does not depend on file order (hash of seed and id)."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def _student(run: RunDir, cfg: EvalConfig) -> StudentConfig:
    """The trained student, in 4-bit or not as eval's --quantize says (default: as trained)."""
    student = run.trained_student()
    if cfg.quantize is not None and cfg.quantize != student.quantize:
        from promptdistill.models.quantize import check_4bit

        if cfg.quantize == "4bit":
            check_4bit(student.model)  # a one-line error now, not after minutes of eval
        student = student.model_copy(update={"quantize": cfg.quantize})
    return student


def load_inputs(path: Path, cfg: EvalConfig, say: Callable[[str], None] | None = None) -> RunInputs:
    run = RunDir(path).require()
    sample = _stage(run, "sample", SampleConfig, required=True)
    adapter = run.require_adapter()
    reader = SampleReader(run.samples)
    records = [r for r in reader.records() if r.get("messages") and "id" in r]
    if reader.skipped and say is not None:
        say(f"warning: {skipped_note(reader.skipped)}")
    if not records:
        raise UserError(f"{run.samples} has no answered prompts; run `promptdistill sample` first")
    val_fraction = _val_fraction(run)
    # the trainer's own split rule (issue #5), so validation prompts were never trained on
    val_ids = {
        str(r["id"])
        for r in records
        if r.get("split") != "heldout" and split_of(str(r["id"]), val_fraction) == "val"
    }
    heldout: list[Item] = []
    train: list[Item] = []
    seen: set[str] = set()
    for r in records:
        # a prompt's first answer only: with `sample --keep correct --attempts K` there may be
        # more, and the first measures the teacher without best-of-K luck (issue #17)
        if str(r["id"]) in seen:
            continue
        seen.add(str(r["id"]))
        split = (
            "heldout"
            if r.get("split") == "heldout"
            else ("validation" if str(r["id"]) in val_ids else "train")
        )
        item = Item.from_sample(r, split)
        if item is None:
            continue
        (train if split == "train" else heldout).append(item)
    if not heldout:
        raise UserError(
            f"{run.samples} has no held-out answers (no validation split and no held-out "
            "prompts): sample with the prompt set's held-out prompts (the default) or train "
            "with a validation fraction above 0"
        )
    notes: dict[str, str] = {}
    if cfg.max_heldout is not None and len(heldout) > cfg.max_heldout:
        # the prompt set's fixed held-out prompts first, then a seeded share of the validation
        keep = set(_stable_order([i.id for i in heldout if i.split == "heldout"], cfg.seed))
        fixed = [i for i in heldout if i.id in keep][: cfg.max_heldout]
        rest_ids = _stable_order([i.id for i in heldout if i.id not in keep], cfg.seed)
        rest = set(rest_ids[: cfg.max_heldout - len(fixed)])
        total = len(heldout)
        heldout = [i for i in heldout if (i in fixed) or i.id in rest]
        notes["heldout"] = f"--max-heldout {cfg.max_heldout}: {len(heldout)} of {total} scored"
    train_by_id = {i.id: i for i in train}
    train = [train_by_id[i] for i in _stable_order(list(train_by_id), cfg.seed)]
    return RunInputs(
        run=run,
        sample=sample,
        student=_student(run, cfg),
        val_fraction=val_fraction,
        samples=records,
        heldout=heldout,
        train=train,
        adapter=adapter,
        notes=notes,
    )
