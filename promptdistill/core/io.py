"""Files that survive a crash: atomic writes and append-only JSONL.

Every file a stage writes is either written atomically (temp file in the same folder, fsync,
rename) or appended line by line as JSONL. A process killed at any moment therefore leaves
either the old file, the new file, or a JSONL file whose only damage is a torn last line, which
`read_jsonl` skips and `JsonlWriter` cuts off before appending.

This is where the program meets the file system, so this is where an `OSError` becomes a
one-line `UserError` naming the path and what to do (`os_error`): a full disk, a read-only
file system, a missing permission (issue #16). A write that fails part-way through a JSONL line
is cut back off, so a full disk never leaves a torn line either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

from promptdistill.core.errors import UserError

# --------------------------------------------------------------------------- OS errors

_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space, then rerun the same command to go on",
    errno.EDQUOT: "the disk quota is used up: free some space, then rerun the same command",
    errno.EFBIG: "the file is larger than this system allows (see `ulimit -f`): free some "
    "space or raise the limit, then rerun the same command",
    errno.EROFS: "the file system is read-only: use a writable directory (e.g. another --run)",
    errno.EACCES: "permission denied: check the folder's permissions or use another directory",
    errno.EPERM: "operation not permitted: check the folder's permissions or use another directory",
    errno.ENOENT: "no such file or directory: was the folder removed?",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "it is a directory, not a file: choose another path",
}


_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def os_error(
    e: OSError, path: Path | str | None = None, action: str | None = "cannot write"
) -> UserError:
    """`e` as the one line a user sees: what failed, on which path, and what to do. `action`
    None: worded from the error alone (for an error whose operation is not known)."""
    if action is None:
        action = "cannot write" if e.errno in _WRITE_ERRORS else "cannot access"
    where = path if path is not None else e.filename
    advice = _ADVICE.get(e.errno or 0) or (e.strerror or str(e))
    return UserError(f"{action} {where if where is not None else 'a file'}: {advice}")


_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")


def as_os_error(e: BaseException) -> OSError | None:
    """`e` if it is an OSError; the OSError inside a library's own error type (safetensors
    raises `SafetensorError("I/O error: File too large (os error 27)")`); else None."""
    if isinstance(e, OSError):
        return e
    found = _OS_ERROR_IN_TEXT.search(str(e))
    if found is None:
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number))


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """OS errors in the block (also those a library wraps in its own type) as one-line
    UserErrors naming `path`: for writes this module does not make itself (weights, plots)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        found = as_os_error(e)
        if found is None:
            raise
        raise os_error(found, path) from None


@contextlib.contextmanager
def new_folder(out: Path, flag: str) -> Iterator[Path]:
    """A folder written whole or not at all, for `export`'s targets (issue #16). `out` is checked
    before the block's work (which can take minutes): not a file, no file above it, empty if it
    exists, and a temp folder beside it can be made (a read-only place fails now, not after the
    work). The block fills the yielded temp folder, which is then renamed to `out`; the temp
    folder never stays behind. Wrap the block's writes in `writing(out)`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a directory; choose a new folder")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"{flag} {out}: {above} is a file, not a directory; choose another path")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{flag} {out} exists and is not an empty folder; choose a new one")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise os_error(e, out) from None
    try:
        yield tmp
        with writing(out):
            if out.exists():
                out.rmdir()  # checked empty above
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise os_error(e, path) from None
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
    try:
        if target.exists() or target.is_symlink():
            aside = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(target, aside)
            os.rename(new, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(new, target)
        fsync_dir(target.parent)
    except OSError as e:
        raise os_error(e, target) from None


# --------------------------------------------------------------------------- JSONL


# Told about each line that is valid JSON but not a record (an object): its 1-based line number
# and what it is. Such a line is skipped, as a torn last line is (issue #16).
OnSkip = Callable[[int, str], None]


def read_text(path: Path, what: str | None = None) -> str:
    """A user's UTF-8 text file (a BOM is dropped); a missing file, a folder or bytes that are
    not UTF-8 are one line naming `what` (a flag and its value; default: the path)."""
    what = what or str(path)
    if path.is_dir():
        raise UserError(f"{what}: a folder, not a file; name the file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{what}: file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what}: not UTF-8 (bad byte at offset {e.start}); re-save the file as UTF-8"
        ) from None


def read_jsonl(path: Path, on_skip: OnSkip | None = None) -> Iterator[dict[str, Any]]:
    """Yield each complete record, reading line by line (a samples.jsonl of 100k answers is
    hundreds of MB). A torn last line (no newline, or bad JSON) is skipped; a bad line in the
    middle is an error, since it means something other than a crash. A line that is JSON but
    not an object (`[1, 2]`) is skipped, and `on_skip` is told its number."""
    for number, value in jsonl_lines(path):
        if isinstance(value, dict):
            yield value
        elif on_skip is not None:
            on_skip(number, f"a JSON {json_kind(value)}, not a record (an object)")


def jsonl_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) of each complete line, whatever JSON it holds;
    torn and bad lines as `read_jsonl` treats them."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as e:
        raise os_error(e, path, "cannot read") from None
    with f:
        previous: bytes | None = None
        for number, line in enumerate(f):  # `number` is the previous line's 1-based number
            if previous is not None:
                try:
                    value = orjson.loads(previous)
                except orjson.JSONDecodeError:
                    raise UserError(
                        f"{path}:{number}: not valid JSON; fix or delete that line"
                    ) from None
                yield number, value
            previous = line if line.strip() else None
        # the last line: only if the write finished (its newline) and it parses
        if previous is not None and previous.endswith(b"\n"):
            try:
                value = orjson.loads(previous)
            except orjson.JSONDecodeError:  # garbage from a crash mid-write: skip it
                return
            yield number + 1, value


def json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "constant"
    return "number"


def repair_jsonl(path: Path) -> int:
    """Cut a torn last line off `path`. Returns the number of bytes removed."""
    if not path.exists():
        return 0
    try:
        size = path.stat().st_size
        with path.open("rb") as f:  # only the tail matters; read-only until a cut is needed
            tail_start = max(0, size - (1 << 20))
            f.seek(tail_start)
            data = f.read()
            while tail_start and data.count(b"\n") < 2:  # a last line longer than the tail
                tail_start = max(0, tail_start - (1 << 20))
                f.seek(tail_start)
                data = f.read()
        keep = data.rfind(b"\n") + 1  # 0 if there is no newline at all
        # the last complete line may itself be garbage from a crash mid-write
        if keep:
            start = data.rfind(b"\n", 0, keep - 1) + 1
            try:
                orjson.loads(data[start : keep - 1] or b"null")
            except orjson.JSONDecodeError:
                keep = start
        keep += tail_start
        if keep < size:
            os.truncate(path, keep)
    except OSError as e:
        raise os_error(e, path) from None
    return size - keep


class JsonlWriter:
    """Append records to a JSONL file, one complete line per write.

    Each `write` hands its line to the OS at once (an unbuffered write), so a killed process
    loses at most the line being written. A write the OS refuses part-way (disk full, file too
    large) is cut back off before the error is raised: the file never keeps half a line.
    `fsync_every` bounds what a power cut could lose without paying an fsync per record.
    """

    def __init__(self, path: Path, fsync_every: int = 256) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            repair_jsonl(path)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, path) from None
        self._fsync_every = fsync_every
        self._unsynced = 0

    def write(self, record: dict[str, Any]) -> None:
        data = memoryview(orjson.dumps(record) + b"\n")
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # the line goes in whole or not at all
            raise os_error(e, self.path) from None
        self._unsynced += 1
        if self._unsynced >= self._fsync_every:
            self.sync()

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise os_error(e, self.path) from None
        self._unsynced = 0

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Sync and close; the file is closed even when the sync fails (then that raises)."""
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
