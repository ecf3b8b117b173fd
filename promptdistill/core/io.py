"""Files that survive a crash: atomic writes and append-only JSONL.

Every file a stage writes is either written atomically (temp file in the same folder, fsync,
rename) or appended line by line as JSONL. A process killed at any moment therefore leaves
either the old file, the new file, or a JSONL file whose only damage is a torn last line, which
`read_jsonl` skips and `JsonlWriter` cuts off before appending.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import yaml

from promptdistill.core.errors import UserError

# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def atomic_write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory `new` to `target`. An old `target` is renamed aside first and
    deleted after, so a crash at any point leaves a complete directory at one of the two names."""
    if target.exists() or target.is_symlink():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
        os.rename(new, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(new, target)
    fsync_dir(target.parent)


# --------------------------------------------------------------------------- JSONL


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each complete record, reading line by line (a samples.jsonl of 100k answers is
    hundreds of MB). A torn last line (no newline, or bad JSON) is skipped; a bad line in the
    middle is an error, since it means something other than a crash."""
    if not path.exists():
        return
    with path.open("rb") as f:
        previous: bytes | None = None
        for number, line in enumerate(f):  # `number` is the previous line's 1-based number
            if previous is not None:
                try:
                    yield orjson.loads(previous)
                except orjson.JSONDecodeError:
                    raise UserError(
                        f"{path}:{number}: not valid JSON; fix or delete that line"
                    ) from None
            previous = line if line.strip() else None
        # the last line: only if the write finished (its newline) and it parses
        if previous is not None and previous.endswith(b"\n"):
            try:
                yield orjson.loads(previous)
            except orjson.JSONDecodeError:  # garbage from a crash mid-write: skip it
                return


def repair_jsonl(path: Path) -> int:
    """Cut a torn last line off `path`. Returns the number of bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    with path.open("rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1  # 0 if there is no newline at all
        # the last complete line may itself be garbage from a crash mid-write
        if keep:
            start = data.rfind(b"\n", 0, keep - 1) + 1
            try:
                orjson.loads(data[start : keep - 1] or b"null")
            except orjson.JSONDecodeError:
                keep = start
        if keep < size:
            f.truncate(keep)
    return size - keep


class JsonlWriter:
    """Append records to a JSONL file, one complete line per write.

    Lines are flushed to the OS after each `write`, so a killed process loses at most the line
    being written. `fsync_every` bounds what a power cut could lose without paying an fsync
    per record.
    """

    def __init__(self, path: Path, fsync_every: int = 256) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(path)
        self.path = path
        self._file: IO[bytes] = path.open("ab")
        self._fsync_every = fsync_every
        self._unsynced = 0

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()
        self._unsynced += 1
        if self._unsynced >= self._fsync_every:
            self.sync()

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = 0

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
