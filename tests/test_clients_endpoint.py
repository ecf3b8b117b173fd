"""The HTTP layer against the fake server: each injected fault becomes the right error type."""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_openai import Fault, start_fake_server

from promptdistill.clients.endpoint import (
    FatalError,
    PromptError,
    RetryableError,
    Transport,
    chat_body,
    normalize_base_url,
    parse_retry_after,
)
from promptdistill.core.errors import UserError

KEY = "sk-TRANSPORT-TEST-9d1c7e"


def _ask(base_url: str, api_key: str | None = None, prompt: str = "hello", **kw: Any) -> Any:
    async def go() -> Any:
        async with Transport(base_url, api_key, 4, kw.pop("timeout", 5.0)) as t:
            body = chat_body(
                kw.pop("model", "fake-teacher"), [{"role": "user", "content": prompt}],
                0.5, 0.9, kw.pop("max_tokens", 64), 1,
            )  # fmt: skip
            return await t.chat(body)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://localhost:8000/v1", "http://localhost:8000/v1"),
        ("http://localhost:8000/v1/", "http://localhost:8000/v1"),
        ("http://localhost:8000", "http://localhost:8000/v1"),
        ("http://localhost:8000/", "http://localhost:8000/v1"),
        ("https://api.example.com/v1/chat/completions", "https://api.example.com/v1"),
        ("https://example.com/openai/deployments/x", "https://example.com/openai/deployments/x"),
    ],
)
def test_base_url_normalisation(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


def test_base_url_that_is_not_http_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--base-url"):
        normalize_base_url("localhost:8000")


def test_retry_after_headers() -> None:
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "100", "retry-after": "9"}) == 0.1
    future = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.5 < (parse_retry_after({"retry-after": future}) or 0) <= 5.0
    assert parse_retry_after({}) is None


def test_answer_usage_and_auth_header() -> None:
    with start_fake_server(api_key=KEY) as server:
        result = _ask(server.base_url, KEY, prompt="What is 2+2?")
        assert result.content == "answer to: What is 2+2?"
        assert result.finish_reason == "stop"
        assert result.usage["completion_tokens"] == 5
        assert server.last_headers["Authorization"] == f"Bearer {KEY}"


def test_no_auth_header_without_a_key() -> None:
    with start_fake_server() as server:
        _ask(server.base_url, None)
        assert "Authorization" not in server.last_headers


@pytest.mark.parametrize(
    ("fault", "error", "kind"),
    [
        (Fault("status", status=429, retry_after_ms=1500), RetryableError, "rate_limit"),
        (Fault("status", status=500), RetryableError, "server"),
        (Fault("status", status=502), RetryableError, "server"),
        (Fault("status", status=503, retry_after=2), RetryableError, "server"),
        (Fault("status", status=408), RetryableError, "server"),
        (Fault("status", status=409), RetryableError, "server"),
        (Fault("drop"), RetryableError, "dropped"),
        (Fault("truncate"), RetryableError, "body"),
        (Fault("malformed"), RetryableError, "body"),
        (Fault("empty"), RetryableError, "content"),
        (Fault("content_filter"), RetryableError, "content"),
        (Fault("slow", delay=2.0), RetryableError, "timeout"),
        (Fault("status", status=400), PromptError, None),
        (Fault("status", status=401), FatalError, None),
        (Fault("status", status=403), FatalError, None),
        (Fault("status", status=404), FatalError, None),
        (Fault("status", status=429, code="insufficient_quota"), FatalError, None),
    ],
)
def test_each_fault_is_classified(fault: Fault, error: type[Exception], kind: str | None) -> None:
    with start_fake_server(faults=[fault]) as server:
        with pytest.raises(error) as info:
            _ask(server.base_url, timeout=0.5)
        if kind is not None:
            assert getattr(info.value, "kind", None) == kind
        if fault.retry_after_ms:
            assert getattr(info.value, "retry_after", None) == 1.5
        if fault.retry_after:
            assert getattr(info.value, "retry_after", None) == 2.0


def test_finish_reason_length_is_an_answer() -> None:
    with start_fake_server(faults=[Fault("length")]) as server:
        result = _ask(server.base_url)
    assert result.finish_reason == "length" and result.content


def test_unreachable_and_fatal_messages_name_the_endpoint_but_not_the_key() -> None:
    faults = [Fault("status", status=401, message=f"bad key {KEY}")]
    with start_fake_server(faults=faults) as s, pytest.raises(FatalError) as info:
        _ask(s.base_url, KEY)
    message = str(info.value)
    assert s.base_url in message and "401" in message and "--api-key" in message
    assert KEY not in message
    with start_fake_server() as s2:
        url = s2.base_url
    with pytest.raises(RetryableError) as unreachable:
        _ask(url, KEY)  # the server is gone: nothing listens on that port
    assert unreachable.value.kind == "unreachable" and url in str(unreachable.value)


def test_fake_server_streams_and_lists_models_for_other_clients() -> None:
    """Later stages (the REPL) stream from the same fake server with the openai SDK."""
    from openai import AsyncOpenAI

    async def go(base_url: str) -> tuple[str, list[str], int]:
        client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        stream = await client.chat.completions.create(
            model="fake-teacher",
            messages=[{"role": "user", "content": "stream me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        models = [m.id async for m in client.models.list()]
        await client.close()
        async with (
            aiohttp.ClientSession() as http,
            http.get(base_url.removesuffix("/v1") + "/health") as r,
        ):
            assert r.status == 200
        return text, models, usage

    with start_fake_server(models=("fake-teacher", "other")) as server:
        text, models, usage = asyncio.run(go(server.base_url))
    assert text == "answer to: stream me"
    assert models == ["fake-teacher", "other"] and usage == 4


# --------------------------------------------------------------------------- issue #16, via the CLI


def _cli_sample(tmp_path: Any, url: str, n: int = 4, *extra: str, **env: str) -> Any:
    from fixtures_openai import cli_args, run_cli, write_persona

    persona = write_persona(tmp_path / "data")
    return run_cli(cli_args(persona, tmp_path / "run", n, url, "--no-heldout", *extra), **env)


@pytest.mark.parametrize("key_in_env", [False, True])
def test_credentials_in_the_base_url_are_refused_before_anything(
    tmp_path: Any, key_in_env: bool
) -> None:
    """`user:KEY@host` would go out as Basic auth and come back in a 401 body; with a key in
    the environment too, aiohttp raised 'Cannot combine AUTHORIZATION header'."""
    from fixtures_openai import one_line_error

    with start_fake_server() as server:
        url = server.base_url.replace("http://", f"http://user:{KEY}@")
        env = {"OPENAI_API_KEY": "sk-env-key-4711"} if key_in_env else {}
        result = _cli_sample(tmp_path, url, **env)
        requests = server.requests
    line = one_line_error(result, 2)
    assert "credentials in the URL" in line and "--api-key-file" in line
    assert "environment" in line and server.base_url in line
    assert KEY not in result.stdout + result.stderr
    assert requests == 0 and not (tmp_path / "run").exists()


def test_an_authorization_value_an_endpoint_echoes_is_redacted(tmp_path: Any) -> None:
    from fixtures_openai import one_line_error

    basic = "dXNlcjpzay1QUk9NUFRESVNUSUxMLVRFU1Q="  # base64 of a user:key pair
    echo = f"Incorrect API key provided: Basic {basic}, or was it Bearer {KEY}?"
    with start_fake_server(faults=[Fault("status", status=401, message=echo)]) as server:
        result = _cli_sample(tmp_path, server.base_url, OPENAI_API_KEY=KEY)
    line = one_line_error(result, 3)
    assert "401" in line and "Basic ***" in line and "Bearer ***" in line, line
    assert basic not in result.stdout + result.stderr and KEY not in result.stdout + result.stderr
    failures = (tmp_path / "run" / "failures.jsonl").read_text()
    assert basic not in failures and KEY not in failures


def test_a_query_string_stays_at_the_end_of_the_request_url(tmp_path: Any) -> None:
    """Azure-style `.../v1?api-version=...`: /chat/completions goes before the query."""
    assert Transport("http://h/v1?api-version=2024-06-01", None, 1, 1).url == (
        "http://h/v1/chat/completions?api-version=2024-06-01"
    )
    with start_fake_server() as server:
        result = _cli_sample(tmp_path, server.base_url + "?api-version=2024-06-01")
        query = server.last_query
    assert result.returncode == 0, result.stderr
    assert query == "api-version=2024-06-01"


def test_a_web_page_instead_of_an_api_answer_stops_after_a_few(tmp_path: Any) -> None:
    from fixtures_openai import one_line_error

    with start_fake_server(faults=[Fault("html")]) as server:
        start = time.monotonic()
        result = _cli_sample(tmp_path, server.base_url, 20, "--concurrency", "1")
        took, requests = time.monotonic() - start, server.requests
    line = one_line_error(result, 3)
    assert f"got text/html from {server.base_url}: is --base-url the API root" in line, line
    assert requests <= 4 and took < 30  # a few, not 20 prompts x 8 retries


def test_a_long_retry_after_is_said_while_waiting(tmp_path: Any) -> None:
    """A 429 with retry-after: 3600 waits (up to the 120 s cap) and the progress line says so;
    SIGTERM then stops it like Ctrl-C, with the line that says how to resume."""
    import signal
    import subprocess

    from fixtures_openai import cli_args, cli_env, write_persona

    limited = Fault("status", status=429, retry_after=3600, first=1)
    with start_fake_server(faults=[limited]) as server:
        args = cli_args(write_persona(tmp_path / "data"), tmp_path / "run", 3,
                        server.base_url, "--no-heldout", "--log-every", "0.3")  # fmt: skip
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
        )
        deadline = time.monotonic() + 60
        while server.requests < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # a few progress lines
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in out + err
    waiting = [line for line in out.splitlines() if "waiting" in line]
    assert waiting, out
    assert "answered 429 with retry-after 3600 s" in waiting[-1], waiting[-1]
    assert "120 s at most" in waiting[-1]
    assert "interrupted; everything answered is saved. Resume with:" in out


def test_a_server_pinned_to_a_name_is_sent_that_name_for_its_path() -> None:
    """`transformers serve` pinned to `smollm2-135m` refuses the model directory's path; our
    client then sends the pinned name (issue #14). Any other name stays refused."""

    async def go(base_url: str) -> list[str]:
        answers = []
        async with Transport(base_url, None, 2, 5.0) as t:
            for model in ("/cache/models/smollm2-135m", "/cache/models/smollm2-135m"):
                body = chat_body(model, [{"role": "user", "content": "hi"}], 0.5, 0.9, 8, None)
                answers.append((await t.chat(body)).content)
            body = chat_body("/cache/models/smollm2-135m", [{"role": "user", "content": "s"}],
                             0.5, 0.9, 8, None)  # fmt: skip
            answers += [d.text async for d in t.stream(body)]
        return answers

    with start_fake_server(pinned="smollm2-135m") as server:
        assert asyncio.run(go(server.base_url))[:2] == ["answer to: hi"] * 2
        # one refusal taught the client the name; later requests (streamed too) carry it
        assert [a.outcome for a in server.arrivals].count("status 400") == 1
        assert _ask(server.base_url, model="smollm2-135m").content == "answer to: hello"
        with pytest.raises(PromptError, match="pinned to 'smollm2-135m'"):
            _ask(server.base_url, model="gpt-4o")
        with pytest.raises(PromptError):
            _ask(server.base_url, model="/cache/models/other-model")


def test_local_teacher_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from promptdistill.clients.local_server import serve_command, serve_cwd, served_name

    embedded = Path("/cache/models/smollm2-135m")
    assert served_name("smollm2-135m", embedded) == "smollm2-135m"
    assert served_name(str(embedded), embedded) == "smollm2-135m"
    assert serve_cwd("smollm2-135m", embedded) == Path("/cache/models")
    cmd = serve_command(embedded, "127.0.0.1", 8000, name="smollm2-135m")
    assert cmd[cmd.index("serve") + 1] == "smollm2-135m"  # FORCE_MODEL, relative to serve_cwd
    # a hub snapshot's folder is named by its commit: it is served under its hub id, through
    # a symlink under $PROMPTDISTILL_HOME/serve
    snapshot = tmp_path / "hub/models--org--tiny/snapshots/0123abcd"
    snapshot.mkdir(parents=True)
    assert served_name("org/tiny", snapshot) == "org/tiny"
    monkeypatch.setenv("PROMPTDISTILL_HOME", str(tmp_path / "home"))
    cwd = serve_cwd("org/tiny", snapshot)
    assert (cwd / "org/tiny").resolve() == snapshot.resolve()
    assert serve_cwd("org/tiny", snapshot) == cwd  # again: the link is reused
