"""The HTTP layer against the fake server: each injected fault becomes the right error type."""

from __future__ import annotations

import asyncio
import email.utils
import time
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
