"""`promptdistill export RUN --dataset OUT`: the distilled training set for other trainers (#14).

The conversations `train` learns from, with every system message stripped (the point of the
distillation), in the run's own splits: `train` and `validation` by the trainer's rule
(`split_of` with the run's val_fraction), and the prompt set's held-out prompts as `test`.
The records are chosen by the rule `train` uses (datums/build.py: `usable_records`): repeated
ids, empty and looping answers are left out. What depends on the student's tokenizer
(`--max-len` truncation) is not applied: another trainer applies its own length limit.

Formats:
- `openai`: OUT/train.jsonl, validation.jsonl, test.jsonl with one `{"messages": [...]}` per
  line, checked against the rules of OpenAI's chat fine-tuning format (`openai_errors`);
  upload train.jsonl (and validation.jsonl) to a hosted fine-tuning API;
- `hf`: a `datasets.DatasetDict` written with `save_to_disk` (`load_from_disk(OUT)`);
- `parquet`: OUT/train.parquet, validation.parquet, test.parquet
  (`load_dataset("parquet", data_dir=OUT)`).
Every row has `id`, `messages`, `prompt_set`, `category` and `turns`; TRL's SFTTrainer and
axolotl's `chat_template` datasets read the `messages` column as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from promptdistill.core.config import DatumConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import new_folder, writing
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader
from promptdistill.datums.build import split_of, usable_records

FORMATS = ("openai", "hf", "parquet")
SPLIT_NAMES = {"train": "train", "val": "validation", "heldout": "test"}
# OpenAI chat fine-tuning (platform.openai.com/docs/guides/fine-tuning, and the cookbook's
# "Data preparation and analysis for chat model fine-tuning" checks)
OPENAI_ROLES = ("system", "user", "assistant", "tool", "function")
OPENAI_KEYS = ("role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id")
OPENAI_MIN_EXAMPLES = 10


@dataclass(kw_only=True)
class DatasetExport:
    out: Path
    format: str
    rows: dict[str, int]  # split -> rows written
    counts: dict[str, int] = field(default_factory=dict)  # what was left out, and why
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def recorded_datum_config(run: RunDir) -> tuple[DatumConfig, bool]:
    """The datum settings `train` recorded (val_fraction, keep_loops), and whether there were
    any (a run not trained yet gets the defaults `train` would use)."""
    train = run.stage_config("train") or {}
    data = train.get("datums")
    if isinstance(data, dict):
        return DatumConfig.model_validate(data), True
    return DatumConfig(), False


def dataset_rows(run: RunDir, cfg: DatumConfig) -> tuple[dict[str, list[dict[str, Any]]], dict]:
    """The rows of each split (system prompt stripped), and the counts of what was left out."""
    counts = {"records": 0, "heldout_skipped": 0, "duplicates": 0, "empty": 0, "loops": 0}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLIT_NAMES.values()}
    reader = SampleReader(run.samples)  # the records in full, whichever way they were written
    keep = run.sample_keep()  # --keep correct: the wrong answers are not training data (#17)
    for rid, r in usable_records(reader.records(), cfg, counts, keep_heldout=True, keep=keep):
        split = "heldout" if r.get("split") == "heldout" else split_of(rid, cfg.val_fraction)
        messages = [
            {"role": str(m["role"]), "content": str(m["content"])}
            for m in r.get("messages") or []
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")
        ]
        if not messages or messages[-1]["role"] != "assistant":
            counts["invalid"] = counts.get("invalid", 0) + 1
            continue
        rows[SPLIT_NAMES[split]].append(
            {
                "id": rid,
                "messages": messages,
                "prompt_set": str(r.get("prompt_set") or ""),
                "category": str(r.get("category") or ""),
                "turns": sum(m["role"] == "user" for m in messages),
            }
        )
    if reader.skipped:  # lines that are not sample records (core/samples.py)
        counts["not_records"] = len(reader.skipped)
    return rows, counts


def openai_errors(example: Any) -> list[str]:
    """What is wrong with one line of an OpenAI chat fine-tuning file (empty if nothing)."""
    if not isinstance(example, dict):
        return ["the line is not a JSON object"]
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["no 'messages' list"]
    errors = []
    extra = set(example) - {"messages", "tools", "functions", "parallel_tool_calls"}
    if extra:
        errors.append(f"unknown keys {sorted(extra)}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            errors.append(f"message {i} is not an object")
            continue
        if m.get("role") not in OPENAI_ROLES:
            errors.append(f"message {i}: role {m.get('role')!r} is not one of {OPENAI_ROLES}")
        unknown = set(m) - set(OPENAI_KEYS)
        if unknown:
            errors.append(f"message {i}: unknown keys {sorted(unknown)}")
        content = m.get("content")
        if not (isinstance(content, str) and content) and "function_call" not in m:
            errors.append(f"message {i}: 'content' must be a non-empty string")
        if "weight" in m and (m.get("role") != "assistant" or m["weight"] not in (0, 1)):
            errors.append(f"message {i}: 'weight' is 0 or 1, on assistant messages only")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errors.append("no assistant message")
    return errors


def export_dataset(
    run: RunDir, out: Path, fmt: str, log: Callable[[str], None] = print
) -> DatasetExport:
    """Write the run's distilled training set to `out` (a new or empty folder) as `fmt`."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    run.require()
    if not run.samples.is_file():
        raise UserError(f"{run.samples} not found; run `promptdistill sample` first")
    with new_folder(out, "--dataset") as tmp:  # checked before the work (issue #16)
        cfg, recorded = recorded_datum_config(run)
        rows, counts = dataset_rows(run, cfg)
        done = DatasetExport(out=out, format=fmt, rows={k: len(v) for k, v in rows.items()},
                             counts=counts)  # fmt: skip
        if not recorded:
            done.warnings.append(
                f"{run.config_path} has no train stage yet: split with the default val_fraction "
                f"{cfg.val_fraction}, as `train` would"
            )
        if not rows["train"]:
            raise UserError(f"{run.samples} has no usable training conversations to export")
        with writing(out):  # a full disk names the target, not the temp folder
            if fmt == "openai":
                _write_openai(tmp, rows, done)
            else:
                _write_hf(tmp, rows, fmt)
    done.files = sorted(p for p in out.rglob("*") if p.is_file())
    return done


def _write_openai(folder: Path, rows: dict[str, list[dict[str, Any]]], done: DatasetExport) -> None:
    for split, items in rows.items():
        lines = []
        for n, item in enumerate(items, start=1):
            example = {"messages": item["messages"]}
            errors = openai_errors(example)
            if errors:  # the rows are built to the rules: this is a bug, not the user's input
                raise UserError(f"{split}.jsonl:{n} ({item['id']}): {'; '.join(errors)}")
            lines.append(orjson.dumps(example) + b"\n")
        if lines:
            (folder / f"{split}.jsonl").write_bytes(b"".join(lines))
    if len(rows["train"]) < OPENAI_MIN_EXAMPLES:
        done.warnings.append(
            f"train.jsonl has {len(rows['train'])} examples; OpenAI fine-tuning needs at "
            f"least {OPENAI_MIN_EXAMPLES}"
        )


def _write_hf(folder: Path, rows: dict[str, list[dict[str, Any]]], fmt: str) -> None:
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "prompt_set": datasets.Value("string"),
            "category": datasets.Value("string"),
            "turns": datasets.Value("int32"),
        }
    )
    splits = {
        name: datasets.Dataset.from_list(items, features=features)
        for name, items in rows.items()
        if items
    }
    if fmt == "hf":
        datasets.DatasetDict(splits).save_to_disk(str(folder))
        return
    for name, data in splits.items():
        data.to_parquet(str(folder / f"{name}.parquet"))
