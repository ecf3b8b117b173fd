"""Prompt sources: user prompts read from files and datasets, beside the templates (issue #14).

A prompt set may list `sources:`; each is one of
- a JSONL file: one object per line with a `prompt` field, or a `messages` list (its first user
  message is the prompt); `field:` names another field; a line may also be a bare JSON string;
- a CSV or TSV file and a column (`column:`; default `prompt`, or the file's only column);
- a text file, one prompt per line;
- a Parquet file, or a folder written by `datasets.save_to_disk`, read with `datasets`;
- a hub dataset id (`dataset: org/name`, `split:`), when the hub is reachable.

Prompts are stripped; empty ones are skipped and exact duplicates dropped, both counted (a
duplicate of an earlier source of the same prompt set counts as a duplicate too). A source's
`heldout:` (a fraction or a count) holds prompts out for eval by a stable hash of their text, so
the same prompts stay held out on every run and are never trained on. Every error names the
file and line (or row) and the field, and says what to do.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies

import orjson

from promptdistill.core.config import PromptSource
from promptdistill.core.errors import UserError
from promptdistill.core.io import read_text
from promptdistill.core.yamlio import field_line

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "text",
            ".text": "text", ".parquet": "parquet"}  # fmt: skip
DEFAULT_FIELDS = ("prompt", "messages")


class FieldError(UserError):
    """No field or column holds the prompts: `where` (file:line, or the source's entry) and
    `problem` say which, so `init --field` can say it its own way (its YAML is not written)."""

    def __init__(self, message: str, where: str, problem: str) -> None:
        super().__init__(message)
        self.where = where
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class SourcePrompt:
    text: str
    gold: str | None = None


@dataclass(kw_only=True)
class LoadedSource:
    """One source's prompts, split into train and held out, with what was skipped."""

    label: str  # the category its prompts carry
    where: str  # the file or dataset, as the user wrote it
    path: Path | None = None  # the file or folder read (None: a hub dataset)
    train: list[SourcePrompt] = field(default_factory=list)
    heldout: list[SourcePrompt] = field(default_factory=list)
    rows: int = 0
    empty: int = 0
    duplicates: int = 0

    def summary(self) -> str:
        return (
            f"{self.where}: {len(self.train) + len(self.heldout):,} prompts from {self.rows:,} "
            f"rows ({len(self.heldout):,} held out, {self.duplicates:,} exact duplicates "
            f"dropped, {self.empty:,} empty skipped)"
        )


@dataclass(frozen=True)
class Where:
    """`prompts/x.yaml:7: field 'sources.0.path'`: where in the prompt set a problem is."""

    yaml_file: Path
    index: int

    def __call__(self, sub: str | None = None) -> str:
        loc: tuple[str | int, ...] = ("sources", self.index, *([sub] if sub else []))
        name = ".".join(str(p) for p in loc)
        return f"{field_line(self.yaml_file, loc)}: field '{name}'"

    def place(self) -> str:
        """`prompts/x.yaml:7`, the source's entry."""
        return field_line(self.yaml_file, ("sources", self.index))


def heldout_hash(text: str) -> float:
    """A stable number in [0, 1) for a prompt's text: which side of `heldout:` it falls on."""
    return int(hashlib.sha256(f"heldout:{text}".encode()).hexdigest()[:8], 16) / 2**32


def load_sources(sources: list[PromptSource], prompt_set_file: Path) -> list[LoadedSource]:
    """Read every source of one prompt set (paths are relative to its file)."""
    seen: set[str] = set()
    return [_load(s, i, prompt_set_file, seen) for i, s in enumerate(sources)]


def _load(source: PromptSource, index: int, yaml_file: Path, seen: set[str]) -> LoadedSource:
    at = Where(yaml_file, index)
    kind, location = _kind(source, yaml_file, at)
    where = source.path or source.dataset or ""
    label = source.category or (Path(where).stem if source.path else where)
    loaded = LoadedSource(label=label, where=where, path=None if kind == "hub" else Path(location))
    prompts: list[SourcePrompt] = []
    for text, gold in _rows(kind, location, source, at):
        loaded.rows += 1
        text = text.strip()
        if not text:
            loaded.empty += 1
        elif text in seen:
            loaded.duplicates += 1
        else:
            seen.add(text)
            prompts.append(SourcePrompt(text=text, gold=gold))
    if not prompts:
        raise UserError(f"{at()}: {where} holds no prompts; check the file and the field or column")
    held = _heldout_texts(prompts, source.heldout, at)
    loaded.train = [p for p in prompts if p.text not in held]
    loaded.heldout = [p for p in prompts if p.text in held]
    return loaded


def _heldout_texts(prompts: list[SourcePrompt], heldout: float | None, at: Where) -> set[str]:
    if heldout is None:
        return set()
    if isinstance(heldout, int):
        if heldout >= len(prompts):
            raise UserError(
                f"{at('heldout')}: {heldout} held out of {len(prompts)} prompts leaves none to "
                "train on; hold out fewer, or a fraction such as 0.1"
            )
        ranked = sorted(prompts, key=lambda p: (heldout_hash(p.text), p.text))
        return {p.text for p in ranked[:heldout]}
    return {p.text for p in prompts if heldout_hash(p.text) < heldout}


def _kind(source: PromptSource, yaml_file: Path, at: Where) -> tuple[str, str]:
    """(format, file path or dataset id), checked."""
    if source.dataset is not None:
        if source.format not in (None, "hub"):
            raise UserError(f"{at('format')}: a 'dataset' is read from the hub; drop 'format'")
        return "hub", source.dataset
    assert source.path is not None
    path = Path(source.path).expanduser()
    if not path.is_absolute():
        path = yaml_file.resolve().parent / path
    if not path.exists():
        raise UserError(
            f"{at('path')}: {path} not found (a relative path is relative to {yaml_file.name}'s "
            "folder); fix the path or create the file"
        )
    kind = source.format or ("disk" if path.is_dir() else SUFFIXES.get(path.suffix.lower()))
    if kind is None:
        raise UserError(
            f"{at('path')}: cannot tell the format of {path.name}; name it .jsonl, .csv, .tsv, "
            ".txt or .parquet, or set 'format:' (jsonl, csv, tsv, text, parquet, disk)"
        )
    if kind == "hub":
        raise UserError(
            f"{at('format')}: 'hub' reads a 'dataset' id; use 'dataset:' instead of 'path:'"
        )
    if (kind == "disk") != path.is_dir():
        raise UserError(
            f"{at('path')}: {path} is {'a folder' if path.is_dir() else 'a file'}, but format "
            f"'{kind}' needs {'a folder (datasets.save_to_disk)' if kind == 'disk' else 'a file'}"
        )
    if kind == "text" and (source.key or source.gold):
        key = "gold" if source.gold else "field" if source.field else "column"
        raise UserError(
            f"{at(key)}: {path.name} is a text file, one prompt per line, with no fields or "
            f"columns; drop '{key}:' (or set 'format:' if it is not plain text)"
        )
    return kind, str(path)


def _rows(
    kind: str, location: str, source: PromptSource, at: Where
) -> Iterator[tuple[str, str | None]]:
    if kind == "jsonl":
        yield from _jsonl(Path(location), source, at)
    elif kind in ("csv", "tsv"):
        yield from _delimited(Path(location), source, "\t" if kind == "tsv" else ",", at)
    elif kind == "text":
        for line in read_text(Path(location)).splitlines():
            yield line, None
    else:
        yield from _dataset(kind, location, source, at)


# --------------------------------------------------------------------------- JSONL and CSV


def _jsonl(path: Path, source: PromptSource, at: Where) -> Iterator[tuple[str, str | None]]:
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e}); fix or delete that line") from None
        if isinstance(record, str):
            yield record, None
            continue
        if not isinstance(record, dict):
            raise UserError(
                f"{path}:{n}: expected a JSON object with a 'prompt' or 'messages' field "
                f"(or a JSON string), not {type(record).__name__}"
            )
        yield _prompt_of(record, source, f"{path}:{n}", at), _gold_of(record, source, f"{path}:{n}")


def _delimited(
    path: Path, source: PromptSource, delimiter: str, at: Where
) -> Iterator[tuple[str, str | None]]:
    lines = read_text(path).splitlines(keepends=True)
    reader = csv.DictReader(lines, delimiter=delimiter)
    header = [h for h in (reader.fieldnames or []) if h is not None]
    if not header:
        raise UserError(f"{path}:1: no header row; the first row must name the columns")
    column = source.key or (
        "prompt" if "prompt" in header else header[0] if len(header) == 1 else None
    )
    if column is None or column not in header:
        wanted = f"column '{column}' is not in the header" if column else "which column?"
        problem = f"{wanted} (columns: {', '.join(header)})"
        raise FieldError(
            f"{path}:1: {problem}; set 'column:' in {at.place()} to the column that holds the "
            "prompts",
            where=f"{path}:1",
            problem=problem,
        )
    if source.gold and source.gold not in header:
        raise UserError(
            f"{path}:1: gold column '{source.gold}' is not in the header ({', '.join(header)}); "
            f"fix 'gold:' in {at.place()}"
        )
    for row in reader:  # a short row has None in its missing cells: an empty prompt, skipped
        gold = row.get(source.gold) if source.gold else None
        yield row.get(column) or "", (gold or None)


# --------------------------------------------------------------------------- one record


def _prompt_of(record: dict[str, Any], source: PromptSource, where: str, at: Where) -> str:
    key = source.key or next((k for k in DEFAULT_FIELDS if k in record), None)
    if key is None or key not in record:
        keys = ", ".join(list(record)[:8]) or "none"
        asked = f"field '{key}'" if key else "no 'prompt' or 'messages' field"
        problem = f"{asked} (the record has: {keys})"
        raise FieldError(
            f"{where}: {problem}; set 'field:' in {at.place()} to the field that holds the prompt",
            where=where,
            problem=problem,
        )
    value = record[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        text = first_user_message(value)
        if text is not None:
            return text
        raise UserError(
            f"{where}: field '{key}': a messages list with no user message with text content "
            '(expected [{"role": "user", "content": "..."}, ...])'
        )
    if value is None:
        return ""
    raise UserError(
        f"{where}: field '{key}': expected text or a messages list, not {type(value).__name__}"
    )


def _gold_of(record: dict[str, Any], source: PromptSource, where: str) -> str | None:
    if source.gold is None:
        return None
    if source.gold not in record:
        raise UserError(f"{where}: gold field '{source.gold}' is missing; add it or drop 'gold:'")
    value = record[source.gold]
    return None if value is None else str(value)


def first_user_message(messages: list[Any]) -> str | None:
    """The text of the first user message of an OpenAI-style messages list."""
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                parts = [p.get("text") for p in content if isinstance(p, dict)]
                text = "\n".join(p for p in parts if isinstance(p, str))
                return text or None
    return None


# --------------------------------------------------------------------------- datasets


def _dataset(
    kind: str, location: str, source: PromptSource, at: Where
) -> Iterator[tuple[str, str | None]]:
    data = open_dataset(kind, location, source.split, at)
    columns = list(data.column_names)
    key = source.key or next((k for k in DEFAULT_FIELDS if k in columns), None)
    if key is None and len(columns) == 1:
        key = columns[0]
    if key is None or key not in columns:
        missing = f"column {key!r}" if key else "prompt or messages column"
        problem = f"no {missing} (columns: {', '.join(columns)})"
        raise FieldError(
            f"{at()}: {location} has {problem}; set 'field:' to the column that holds the prompts",
            where=location,
            problem=problem,
        )
    if source.gold is not None and source.gold not in columns:
        raise UserError(f"{at('gold')}: {location} has no column '{source.gold}'")
    wanted = [key] + ([source.gold] if source.gold else [])
    for n, row in enumerate(data.select_columns(wanted), start=1):
        record = {k: row[k] for k in wanted}
        text = _prompt_of(record, source.model_copy(update={"field": key, "column": None}),
                          f"{location} row {n}", at)  # fmt: skip
        yield text, _gold_of(record, source, f"{location} row {n}")


def open_dataset(kind: str, location: str, split: str | None, at: Where) -> Any:
    """A `datasets.Dataset` from a Parquet file, a save_to_disk folder or the hub."""
    import datasets
    import huggingface_hub

    from promptdistill.models.resolve import promptdistill_home

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    # the hub client logs each retry of an unreachable hub; the one-line error below says it
    huggingface_hub.utils.logging.set_verbosity_error()
    cache = str(promptdistill_home() / "datasets")
    offline: str | None = None
    try:
        if kind == "parquet":
            return datasets.Dataset.from_parquet(location, cache_dir=cache, keep_in_memory=True)
        if kind == "disk":
            loaded = datasets.load_from_disk(location, keep_in_memory=True)
        else:
            with offline_unless_reachable() as offline:
                loaded = datasets.load_dataset(location, split=split or "train", cache_dir=cache)
    except UserError:
        raise
    except Exception as e:  # a corrupt file, a missing folder, an unreachable hub
        reason = " ".join(str(e).split())[:200]
        hint = (
            (f"{offline}, and the dataset is not in the local cache" if offline else
             "check the id and that the hub is reachable")
            + " (or download it once and point 'path:' at a save_to_disk folder or Parquet file)"
            if kind == "hub"
            else "check the file"
        )  # fmt: skip
        raise UserError(
            f"{at()}: cannot read {location} ({type(e).__name__}: {reason}); {hint}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        name = split or "train"
        if name not in loaded:
            raise UserError(
                f"{at('split')}: {location} has no split '{name}' (splits: {', '.join(loaded)}); "
                "set 'split:'"
            )
        return loaded[name]
    return loaded


@contextlib.contextmanager
def offline_unless_reachable(timeout_s: float = 5.0) -> Iterator[str | None]:
    """Hub reads in offline mode (the local cache only) when the hub's host does not accept a
    connection within `timeout_s`: the hub client otherwise retries an unreachable host with
    backoff for about half a minute before it gives up. Yields why the read is offline, or
    None. Behind a proxy (HTTPS_PROXY and the like) a direct connection says nothing: no check."""
    import datasets
    import huggingface_hub

    hub = huggingface_hub.constants
    if hub.HF_HUB_OFFLINE:
        yield "HF_HUB_OFFLINE is set"
        return
    if set(getproxies()) - {"no"}:  # HTTPS_PROXY and the like, as urllib reads them
        yield None
        return
    if hub_answers(hub.ENDPOINT, timeout_s):
        yield None
        return
    saved = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield f"the hub ({hub.ENDPOINT}) did not answer"
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def hub_answers(endpoint: str, timeout_s: float) -> bool:
    """Whether the hub's host accepts a TCP connection within `timeout_s`."""
    url = urlsplit(endpoint)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
    except (OSError, ValueError):
        return False
    return True
