"""The embedded local teacher as a server: `transformers serve` on a local model directory.

`teacher serve` (an endpoint for other programs), the REPL's streamed teacher and `prompts
generate` start it. `sample` does not: it answers in process, batched, which is faster on a CPU
(clients/in_process.py).

We do not write a server: `transformers serve DIR --continuous-batching` is an OpenAI-compatible
endpoint (`/v1/chat/completions`, `/health`). This module starts it on a loopback port, waits
until `/health` answers, hands out its base URL and model name, and stops it again:

    with running_local_teacher("smollm2-135m") as teacher:
        ...  # POST f"{teacher.base_url}/chat/completions" with model=teacher.model

Facts about `transformers serve` (5.x) this relies on, read from its source:
- with a positional FORCE_MODEL it loads that model *before* uvicorn binds the port, so `/health`
  answering means the model is ready;
- a request must name exactly that FORCE_MODEL string in `model` (or none), else it gets 400
  ("Server is pinned to ..."), and `/v1/models` lists that string alone. It cannot be given a
  second name, but FORCE_MODEL may be a path relative to its working directory: we start it
  in the model directory's parent (or in a folder of symlinks, for a hub snapshot) and pin
  it to the name the user knows, `smollm2-135m` (issue #14). So `.model`, the name requests
  must carry, is that name; other clients send it too (or no `model` at all). A request that
  names the model directory's *path* is refused by the server; our client (clients/endpoint.py,
  `Transport`) then sends the pinned name instead, so `--model PATH` keeps working with us;
- `logprobs` and `n` are accepted but ignored;
- with continuous batching, the sampling settings (temperature, top_p) of the *first* request
  apply to every later one; only max_tokens is per request. One `sample` run sends one setting,
  so this only matters for a long-lived `teacher serve` shared by runs with different settings;
- it samples only because the converted model's generation_config has do_sample=True (see
  models.convert_gguf); a temperature-0 first request makes it greedy.

The server runs in its own session (process group), so a Ctrl-C in the terminal reaches only us;
we then stop the whole group (SIGTERM, then SIGKILL). On Linux it also gets SIGKILL if we die
without cleaning up (PR_SET_PDEATHSIG), so no orphaned server keeps eating the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from promptdistill.core.errors import UserError
from promptdistill.models.load import dtype_name
from promptdistill.models.resolve import (
    DEFAULT_MODEL,
    EMBEDDED,
    HUB_ID,
    promptdistill_home,
    resolve_model,
)

STARTUP_TIMEOUT_S = 300.0  # model load on 2 busy cores; the conversion is not counted
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 20
# transformers serve sizes the continuous-batching KV cache to 60% of free RAM on CPU when not
# told otherwise: ~13 GB here, which took 75 s to allocate on the first request and starves
# everything else on the machine. 32k tokens (1.5 GB in fp32, half in bf16) hold ~30 Beethoven
# conversations (938-token system prompt + answer); more requests simply wait their turn.
KV_CACHE_TOKENS = 32768
# Tokens per KV-cache block. transformers' prefix cache shares whole blocks only: with its default
# of 256, a 960-token persona prompt shares 768 tokens and prefills the rest per request; with 32
# it shares all but the last partial block. Measured in-process (docs/benchmarks.md): a repeated
# 960-token prompt then costs what a 12-token one does (0.26 s vs 1.07 s for 8 new tokens).
PAGE_SIZE = 32
MAX_BATCH_TOKENS = 1024  # tokens per forward step; bounds the attention-mask memory
PORT_IN_USE = re.compile(r"address already in use|Errno 98|Errno 48", re.IGNORECASE)


@dataclass
class LocalTeacher:
    """A running `transformers serve`: where to send requests and what model name to use."""

    base_url: str  # ends in /v1
    model: str  # the name the server expects in requests (served_name): e.g. smollm2-135m
    log_path: Path
    host: str
    port: int
    model_dir: Path
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def check(self) -> None:
        """Raise UserError if the server has died since it started."""
        code = self.process.poll()
        if code is not None:
            raise UserError(
                f"the local teacher (transformers serve, pid {self.process.pid}) exited with "
                f"code {code}; its log {self.log_path} ends: {self.log_tail()}"
            )


def served_name(model: str, model_dir: Path) -> str:
    """The name the server answers to: the user's name for an embedded model or a hub id
    (`smollm2-135m`, `org/name`), else the model directory's own name."""
    text = str(model).strip()
    if text in EMBEDDED or (HUB_ID.match(text) and not Path(text).expanduser().exists()):
        return text
    return model_dir.name


def serve_cwd(name: str, model_dir: Path) -> Path:
    """A working directory in which `name`, as a relative path, is the model directory: its
    parent when the names agree, else a folder of symlinks under $PROMPTDISTILL_HOME/serve."""
    if model_dir.name == name:
        return model_dir.parent
    root = promptdistill_home() / "serve"
    link = root / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and link.resolve() == model_dir.resolve()):
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(model_dir.resolve(), target_is_directory=True)
        os.replace(tmp, link)  # atomic: another process may be starting the same model
    return root


def serve_command(
    model_dir: Path,
    host: str,
    port: int,
    dtype: str = "auto",
    kv_cache_tokens: int = KV_CACHE_TOKENS,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    name: str | None = None,
) -> list[str]:
    """The `transformers serve` command line, run by this interpreter (works in any venv).

    `name`: FORCE_MODEL as a path relative to the server's working directory (`serve_cwd`),
    the name requests must carry; None pins it to the directory's absolute path.
    kv_cache_tokens / max_batch_tokens 0 leave the sizing to transformers (60% of free RAM).
    """
    cmd = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        name or str(model_dir),
        "--continuous-batching",
        "--device",
        "cpu",
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype_name(dtype),
    ]
    if kv_cache_tokens > 0:
        cmd += ["--cb-block-size", str(PAGE_SIZE)]
        cmd += ["--cb-num-blocks", str(max(1, -(-kv_cache_tokens // PAGE_SIZE)))]
    if max_batch_tokens > 0:
        cmd += ["--cb-max-batch-tokens", str(max_batch_tokens)]
    return cmd


@contextlib.contextmanager
def running_local_teacher(
    model: str = DEFAULT_MODEL,
    port: int | None = None,
    host: str = "127.0.0.1",
    log: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    dtype: str = "auto",
    kv_cache_tokens: int = KV_CACHE_TOKENS,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
) -> Iterator[LocalTeacher]:
    """Start `transformers serve` for `model`, wait for /health, yield it, stop it on exit.

    port None picks a free loopback port (and retries with another if it is taken meanwhile).
    The server's stdout and stderr go to `log_path` (default: $PROMPTDISTILL_HOME/logs/).
    dtype "auto" is bf16 where the CPU has native bf16, else fp32: bf16 halves the weight and
    KV-cache memory. Its speed against fp32 is not settled here: in one run on a loaded machine,
    plain `generate` prefilled 960 tokens faster in bf16 (9.8 vs 12.5 CPU s) but decoded at
    batch 1 slower; batched decoding (what the server does) is closer to the prefill case.
    """
    say = log or (lambda _msg: None)
    model_dir = resolve_model(model, log=say)
    if not any(model_dir.glob("*.safetensors")):
        raise UserError(
            f"{model_dir} has no *.safetensors weights; the local teacher only serves "
            f"safetensors models (re-save with save_pretrained(safe_serialization=True))"
        )
    name = served_name(model, model_dir)
    if "@" in f"{model_dir}{name}" or ":" in f"{model_dir}{name}":
        # transformers serve reads '@' as a revision and ':' as a GGUF file name in model ids.
        raise UserError(f"model directory {model_dir} contains '@' or ':'; move it elsewhere")
    cwd = serve_cwd(name, model_dir)
    if port is not None:
        ensure_port_free(host, port)
    if log_path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_path = promptdistill_home() / "logs" / f"teacher-{stamp}-{os.getpid()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port(host)
        cmd = serve_command(
            model_dir, host, chosen, dtype, kv_cache_tokens, max_batch_tokens, name=name
        )
        teacher = _start(cmd, model_dir, host, chosen, log_path, name=name, cwd=cwd)
        try:
            _wait_healthy(teacher, startup_timeout_s, port_was_chosen=port is None)
        except _PortRaced:
            _stop(teacher)
            if attempt + 1 < attempts:
                continue
            raise UserError(
                f"could not find a free port on {host} for the local teacher after {attempts} "
                f"tries; pass --port explicitly (log: {log_path})"
            ) from None
        except BaseException:  # UserError, timeout, Ctrl-C while loading: never leak the server
            _stop(teacher)
            raise
        break
    say(f"transformers serve (pid {teacher.process.pid}) is up; its log: {log_path}")
    try:
        yield teacher
    finally:
        _stop(teacher)


# --------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_port_free(host: str, port: int) -> None:
    """UserError if something already listens on host:port (checked before a slow model load)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As uvicorn does: SO_REUSEADDR, so a port in TIME_WAIT does not count as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(
                f"port {port} on {host} is already in use ({e.strerror}); pick another "
                f"with --port, or leave --port out to use a free one"
            ) from None


def client_url(host: str, port: int) -> str:
    """The base URL a client on this machine uses (a wildcard bind is reached via loopback)."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


# --------------------------------------------------------------------------- process


def _start(
    cmd: list[str], model_dir: Path, host: str, port: int, log_path: Path, name: str, cwd: Path
) -> LocalTeacher:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            # The model is a local directory: never reach for the hub (there may be no network).
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    with open(log_path, "ab") as fh:
        fh.write(f"$ cd {cwd} && {' '.join(cmd)}\n".encode())
        fh.flush()
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,  # FORCE_MODEL is `name`, relative to it
            start_new_session=True,  # its own process group: Ctrl-C reaches us, not it
            preexec_fn=_die_with_parent_fn(),
        )
    return LocalTeacher(
        base_url=client_url(host, port),
        model=name,
        log_path=log_path,
        host=host,
        port=port,
        model_dir=model_dir,
        process=process,
    )


def _die_with_parent_fn() -> Callable[[], None] | None:
    """preexec_fn: kill the server when we die, even by SIGKILL (Linux PR_SET_PDEATHSIG).

    SIGKILL, not SIGTERM: on SIGTERM uvicorn waits for in-flight requests, which nobody will
    read any more (seen: an orphan waiting forever). The signal fires when the *thread* that
    forked exits, so only use it from the main thread.
    """
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))

    return set_pdeathsig


class _PortRaced(Exception):
    """The auto-picked port was taken between our check and the server's bind."""


def _wait_healthy(teacher: LocalTeacher, timeout_s: float, port_was_chosen: bool) -> None:
    health = teacher.base_url.removesuffix("/v1") + "/health"
    deadline = time.monotonic() + timeout_s
    while True:
        code = teacher.process.poll()
        if code is not None:
            tail = teacher.log_tail()
            if PORT_IN_USE.search(tail):
                if port_was_chosen:
                    raise _PortRaced
                raise UserError(
                    f"port {teacher.port} on {teacher.host} is already in use (transformers serve "
                    f"could not bind it); pick another with --port. Log {teacher.log_path}: {tail}"
                )
            error = last_error(teacher.log_path)
            raise UserError(
                f"the local teacher (transformers serve) exited with code {code} before it became "
                f"healthy{': ' + error if error else ''}; its log {teacher.log_path} ends: {tail}"
            )
        if _get_ok(health):
            return
        if time.monotonic() > deadline:
            raise UserError(
                f"the local teacher (transformers serve) was not healthy at {health} within "
                f"{timeout_s:g}s; its log {teacher.log_path} ends: {teacher.log_tail()}"
            )
        time.sleep(0.25)


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _stop(teacher: LocalTeacher) -> None:
    """SIGTERM the server's process group; SIGKILL it if it is not gone in time."""
    process = teacher.process
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*$", re.MULTILINE)


def last_error(path: Path) -> str | None:
    """The final `SomeError: message` line of a Python traceback in the log, if any."""
    try:
        text = path.read_bytes()[-64_000:].decode("utf-8", errors="replace")
    except OSError:
        return None
    matches = list(ERROR_LINE.finditer(text))
    return " ".join(matches[-1].group(0).split())[:400] if matches else None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, compact, on one line: progress bars (\\r) split, ' | ' joined."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64_000))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    parts = [" ".join(p.split()) for p in re.split(r"[\r\n]+", text)]
    parts = [p[:240] for p in parts if p]
    return " | ".join(parts[-lines:]) or "(empty log)"
