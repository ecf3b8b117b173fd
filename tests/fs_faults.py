"""Real file-system faults for tests: a full disk, a file-size limit, a read-only directory.

- `tmpfs(path, size)`: a real tmpfs of `size` bytes mounted at `path` (needs root and
  CAP_SYS_ADMIN, as in a CI container; the test is skipped with the reason where it cannot
  mount). Writing past its size fails with ENOSPC, as on a full disk; `remount` grows it.
- `file_size_limit(n)`: a `preexec_fn` that caps every file the child writes at `n` bytes
  (RLIMIT_FSIZE): a write past it fails with EFBIG, a stand-in for a full disk that works for
  any user. SIGXFSZ is ignored in the child, so the write fails instead of killing it.
- `read_only_dir(path)`: a directory no one can write: a read-only tmpfs (EROFS) where the
  test may mount one, else a chmod 555 folder (EACCES) for a user who is not root; skipped
  where neither holds (root without mount rights).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: int, read_only: bool = False) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        result = _mount("-t", "tmpfs", "-o", options, "tmpfs", str(path))
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    result = _mount("-o", f"remount,{options}", str(path))
    assert result.returncode == 0, result.stderr


def fill(path: Path) -> None:
    """Write into `path` until its file system is full."""
    with contextlib.suppress(OSError), (path / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def file_size_limit(nbytes: int) -> Callable[[], None]:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """A directory that cannot be written; yields it (see the module docstring)."""
    if os.geteuid() == 0:
        with tmpfs(path, 1 << 20, read_only=True) as ro:
            yield ro
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("cannot make a read-only directory here")
        yield path
    finally:
        path.chmod(0o755)


def unwritable_target(
    kind: str, root: Path, stack: contextlib.ExitStack
) -> tuple[Path, str, Path | None]:
    """An output folder under `root` that cannot be made, for `export`'s targets: 'a file' (the
    path is a file), 'under a file' (a file above it) or 'read-only'. Returns the path, what
    its one-line error must say, and the file (holding b"keep me") that must stay untouched."""
    if kind == "a file":
        (root / "out.bin").write_bytes(b"keep me")
        return root / "out.bin", "is a file, not a directory", root / "out.bin"
    if kind == "under a file":
        (root / "outs").write_bytes(b"keep me")
        return root / "outs" / "out", f"{root / 'outs'} is a file, not a directory", root / "outs"
    ro = stack.enter_context(read_only_dir(root / "ro"))
    return ro / "out", "read-only" if os.geteuid() == 0 else "permission denied", None
