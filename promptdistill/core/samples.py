"""RUN/samples.jsonl records: written with the system prompt stored once, read in full.

A persona's system prompt is the same in every sample, and long (Beethoven's is 4 KB; one user's
was 5 MB). Copied into every record it made 5000 samples 20 MB larger (issue #16), so a record
names it by its hash instead, and the prompt itself is stored once per run as plain text:

    RUN/system-prompts/3f2a9c0d1e2b4a5f.txt
    {"id": "beethoven:...", "split": "train", ..., "system_prompt": "3f2a9c0d1e2b4a5f",
     "messages": [{"role": "user", ...}, {"role": "assistant", ...}], "finish_reason": ...}

Runs sampled before that carry the system message inline, as the first of `messages`. Every
reader goes through `SampleReader`, which yields both kinds the same way: the record as it was
always read, with the system message first in `messages` and no `system_prompt` key. So the
datums, eval, the stream reader, the resume checks and the on-policy scorer see the same
messages whichever way a run was written.

`SampleReader` also skips what is not a sample record, and says where: a line that is JSON but
not an object, or whose `messages` is not a list of {role, content} (issue #16). A torn last line
is skipped by `read_jsonl` already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_text, json_kind, jsonl_lines, os_error

SYSTEM_KEY = "system_prompt"
SYSTEM_DIR = "system-prompts"


def prompt_hash(text: str) -> str:
    """The key a system prompt is stored under: the first 64 bits of its sha256, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def system_prompt_file(samples: Path, key: str) -> Path:
    return samples.parent / SYSTEM_DIR / f"{key}.txt"


def store_system_prompt(samples: Path, text: str) -> str:
    """Store `text` beside `samples` (once: the file name is its hash) and return its key.
    Written atomically before any record names it, so a record never names a missing file."""
    key = prompt_hash(text)
    path = system_prompt_file(samples, key)
    try:
        same = path.is_file() and path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        same = False
    if not same:
        atomic_write_text(path, text)
    return key


def compact(record: dict[str, Any], key: str) -> dict[str, Any]:
    """`record` as it is written: its leading system message replaced by the prompt's key."""
    messages = record.get("messages") or []
    if not messages or messages[0].get("role") != "system":
        return record
    out = {k: v for k, v in record.items() if k != "messages"}
    out[SYSTEM_KEY] = key
    out["messages"] = messages[1:]
    return out


# Told about every line skipped as not a sample record: `path:line: what it is`.
OnSkip = Callable[[str], None]


class SampleReader:
    """The records of one samples.jsonl, in full (see the module docstring).

    `skipped` lists `path:line: reason` for each line that is not a sample record; `on_skip`,
    if given, is told each as it is found."""

    def __init__(self, samples: Path, on_skip: OnSkip | None = None) -> None:
        self.path = samples
        self.on_skip = on_skip
        self.skipped: list[str] = []
        self._prompts: dict[str, str] = {}

    def records(self) -> Iterator[dict[str, Any]]:
        """Every sample record, in file order, each with its system message in `messages`."""
        for number, value in jsonl_lines(self.path):
            full = self.expand(value, at=f"{self.path}:{number}")
            if full is not None:
                yield full

    def expand(self, record: Any, at: str | None = None) -> dict[str, Any] | None:
        """One parsed line as a full record, or None (said through `skipped`) when it is not a
        sample record. `at` names the line in that message (`path:line`)."""
        at = at or str(self.path)
        if not isinstance(record, dict):
            self._skip(f"{at}: a JSON {json_kind(record)}, not a record (an object)")
            return None
        messages = record.get("messages")
        if messages is not None and not _messages_ok(messages):
            self._skip(f"{at}: 'messages' is not a list of {{role, content}} objects")
            return None
        key = record.get(SYSTEM_KEY)
        if key is None:
            return record
        out = {k: v for k, v in record.items() if k != SYSTEM_KEY}
        system = {"role": "system", "content": self.system_prompt(str(key))}
        out["messages"] = [system, *(messages or [])]
        return out

    def system_prompt(self, key: str) -> str:
        """The stored system prompt `key` (read once per reader)."""
        if key not in self._prompts:
            path = system_prompt_file(self.path, key)
            try:
                self._prompts[key] = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise UserError(
                    f"{path} is missing, and {self.path} names it as its samples' system prompt: "
                    "restore it (from a copy of the run), or sample into a new --run directory"
                ) from None
            except (OSError, UnicodeDecodeError) as e:
                if isinstance(e, OSError):
                    raise os_error(e, path, "cannot read") from None
                raise UserError(f"{path}: not UTF-8 text; restore it from a copy") from None
        return self._prompts[key]

    def _skip(self, message: str) -> None:
        self.skipped.append(message)
        if self.on_skip is not None:
            self.on_skip(message)


def _messages_ok(messages: Any) -> bool:
    return isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )


def skipped_note(skipped: list[str], total: int | None = None, shown: int = 3) -> str:
    """One line about the lines skipped: how many (`total`, else all of `skipped`), and where
    the first few are."""
    n = len(skipped) if total is None else total
    more = f" (and {n - shown} more)" if n > shown else ""
    return (
        f"skipped {n} line{'s' if n != 1 else ''} of samples that "
        f"{'are' if n != 1 else 'is'} not a sample record: " + "; ".join(skipped[:shown]) + more
    )
