"""The embedded local teacher: a real `transformers serve` subprocess on 127.0.0.1.

The happy path runs the real CLI (`teacher serve` + Ctrl-C; `sample` answers in process now,
tests/test_clients_in_process.py); the failure cases are real failures: a port someone else
holds, a model directory the server cannot load, a startup deadline it cannot meet, a model
name nobody knows.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptdistill.clients.endpoint import ChatResult, Transport, chat_body
from promptdistill.clients.local_server import free_port, running_local_teacher
from promptdistill.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "promptdistill", *args]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent may not have reaped it yet).
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def chat(
    base_url: str, model: str, content: str, max_tokens: int = 8, temperature: float = 1.0
) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        result = json.loads(response.read())
    return str(result["choices"][0]["message"]["content"])


async def _chat_with_our_client(base_url: str, model: str, content: str) -> ChatResult:
    async with Transport(base_url, None, concurrency=1, timeout_s=300) as transport:
        body = chat_body(model, [{"role": "user", "content": content}], 1.0, 1.0, 8, None)
        return await transport.chat(body)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port that another program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# --------------------------------------------------------------------------- happy paths


@pytest.mark.slow
def test_teacher_serve_prints_how_to_use_it_and_stops_on_ctrl_c(smollm2_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        cli("teacher", "serve", "--port", str(port)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        out = "".join(lines)
        assert f"local teacher ready at http://127.0.0.1:{port}/v1" in out, out
        model = re.search(r"^\s+model:\s+(\S+)$", out, re.MULTILINE)
        server_pid = re.search(r"transformers serve \(pid (\d+)\)", out)
        assert model and server_pid, out
        # issue #14: it answers to the name used everywhere else, and /v1/models lists it
        assert model.group(1) == "smollm2-135m"
        assert (
            f"promptdistill sample beethoven --run runs/beethoven -n 1000 --base-url "
            f"http://127.0.0.1:{port}/v1 --model smollm2-135m"
        ) in out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as r:
            listed = [m["id"] for m in json.loads(r.read())["data"]]
        assert listed == ["smollm2-135m"], listed
        # its path, as earlier versions printed it, still works through our client, which
        # sends the server's pinned name when the server refuses the path
        by_path = asyncio.run(
            _chat_with_our_client(f"http://127.0.0.1:{port}/v1", str(smollm2_dir), "Hello!")
        )
        assert by_path.content.strip()

        # The printed base URL and model name are what a client needs, and the teacher samples
        # (temperature 1): the same question gets different answers.
        base_url = f"http://127.0.0.1:{port}/v1"
        # 24 sampled tokens: three identical answers would take a ~1e-6 coincidence.
        story = "Tell me a story about a cat."
        answers = [chat(base_url, model.group(1), story, max_tokens=24) for _ in "abc"]
        assert all(a.strip() for a in answers)
        assert len(set(answers)) > 1, answers

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "local teacher stopped" in rest
    assert "Traceback" not in rest
    assert not listening(port)
    assert not pid_alive(int(server_pid.group(1)))


# --------------------------------------------------------------------------- failures


def test_port_taken_is_refused_before_loading(held_port: int) -> None:
    started = time.monotonic()
    result = subprocess.run(
        cli("teacher", "serve", "--port", str(held_port)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    err = result.stderr.strip()
    assert f"port {held_port} on 127.0.0.1 is already in use" in err
    assert "--port" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert time.monotonic() - started < 60  # no model was loaded to find that out


def test_port_taken_in_library_call(held_port: int) -> None:
    taken = f"port {held_port} on 127.0.0.1 is already in use"
    with pytest.raises(UserError, match=taken), running_local_teacher(port=held_port):
        pass


def test_unknown_model_name() -> None:
    result = subprocess.run(
        cli("teacher", "serve", "--model", "gpt-17"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    err = result.stderr.strip()
    assert "unknown model 'gpt-17'" in err and "smollm2-135m" in err
    assert len(err.splitlines()) == 1


def _broken_model_dir(path: Path) -> Path:
    """A directory that passes our checks but that transformers cannot load."""
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps({"model_type": "no-such-architecture", "architectures": ["NoSuchModel"]})
    )
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def _no_server_left(port: int) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"transformers.cli.transformers" in args and str(port).encode() in args:
            pid = int(cmdline.parent.name)
            if pid_alive(pid):
                return False
    return True


@pytest.mark.slow
def test_server_that_dies_shows_its_log(tmp_path: Path) -> None:
    broken = _broken_model_dir(tmp_path / "broken-model")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with (
        pytest.raises(UserError) as e,
        running_local_teacher(str(broken), port=port, log_path=log_path),
    ):
        pass
    message = str(e.value)
    assert "exited with code" in message and "before it became healthy" in message
    assert str(tmp_path / "serve.log") in message
    # The server's own complaint first, then the tail of its log, all on one line.
    assert "before it became healthy: ValueError: Unrecognized processing class" in message
    assert " | " in message and "transformers/cli/serving/model_manager.py" in message
    assert "\n" not in message
    assert not listening(port) and _no_server_left(port)


@pytest.mark.slow
def test_server_not_healthy_in_time_is_stopped(smollm2_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    started = time.monotonic()
    with (
        pytest.raises(UserError) as e,
        running_local_teacher(port=port, log_path=log_path, startup_timeout_s=0.5),
    ):
        pass
    message = str(e.value)
    assert f"was not healthy at http://127.0.0.1:{port}/health within 0.5s" in message
    assert "transformers.cli.transformers serve" in message  # the log tail, with the command
    assert time.monotonic() - started < 60
    assert not listening(port) and _no_server_left(port)
