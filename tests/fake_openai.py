"""A fault-injecting OpenAI-compatible chat server for tests and benchmarks (127.0.0.1 only).

Answers are deterministic and derived from the request: the assistant says
`answer to: <the user's prompt>`, so a test can check that every prompt got *its* answer.
Every request is recorded (arrival time, prompt, outcome), so tests can count how often each
prompt was asked and how many requests arrived in any one second.

Faults are rules, checked in order for each request; the first that applies fires:

    Fault("status", status=429, retry_after_ms=200, first=2)   # first 2 tries of every prompt
    Fault("status", status=400, match="Moonlight")             # always, for prompts containing it
    Fault("drop", prob=0.1)                                    # 10% of requests (seeded)
    Fault("truncate", times=3)                                 # the first 3 requests overall

kinds: status (any code, with optional retry-after / retry-after-ms headers), drop (close the
connection without answering), truncate (announce a body, send half, close), malformed (200 with
invalid JSON), empty (200, empty content), length (finish_reason "length"), content_filter,
slow (wait `delay` seconds, then answer normally), html (200 with a web page, as a site's root
or a login page in front of an API answers).

With `lm=(model, tokenizer)`, a tiny real model answers instead (sampled, seeded by the request's
`seed`), so that `logprobs: true, top_logprobs: K` returns real logprobs of its tokens, and a
vLLM-style scoring request (`prompt_logprobs: K` with `continue_final_message: true`) returns
the real logprob of every prompt token and `prompt_token_ids`. `ignore_logprobs=True` answers
as `transformers serve` does: no logprobs whatever was asked.

In-process use (a background thread with its own event loop):

    with start_fake_server(latency=0.05, faults=[...], api_key="k") as server:
        server.base_url          # http://127.0.0.1:PORT/v1
        server.asked["..."]      # requests per user prompt
        server.arrivals          # [(monotonic time, prompt, outcome)]

As a separate process (benchmarks): `python tests/fake_openai.py --latency 0.5` prints
`PORT <n>` on its first line and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

HOST = "127.0.0.1"


@dataclass
class Fault:
    kind: str
    status: int = 500
    match: str | None = None  # only prompts containing this text (None: every prompt)
    first: int | None = None  # only the first K requests of each matching prompt
    prob: float = 1.0  # chance of firing (seeded by the server's seed)
    times: int | None = None  # fire at most this many times in total
    retry_after: float | str | None = None  # `retry-after` header (seconds or HTTP date)
    retry_after_ms: float | None = None  # `retry-after-ms` header
    delay: float = 0.0  # for "slow"
    message: str = ""
    code: str | None = None  # the error body's `code`, e.g. "insufficient_quota"
    fired: int = 0


@dataclass
class Arrival:
    t: float  # time.monotonic() when the request arrived
    prompt: str
    outcome: str = ""  # "ok", "length", "status 429", "drop", ...
    tokens: int = 0  # total tokens reported in usage (0 for errors)
    seed: int | None = None  # the request's sampling `seed`


@dataclass
class FakeOpenAI:
    latency: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    api_key: str | None = None  # if set, requests need `Authorization: Bearer <api_key>`
    models: Sequence[str] = ("fake-teacher",)  # other model names get a 404
    # answer like `transformers serve` pinned to one model: any other name gets its 400
    pinned: str | None = None
    max_in_flight: int | None = None  # above this: 429 with retry-after-ms (a concurrency limit)
    limit_retry_after_ms: float | None = 100.0
    answer_words: int = 0  # pad answers to at least this many words
    stream_delay: float = 0.0  # seconds between streamed chunks
    seed: int = 0
    record: bool = True
    # canned answers (e.g. an LLM judge's replies): messages -> content, instead of "answer to:"
    responder: Callable[[list[dict[str, Any]]], str] | None = None
    lm: tuple[Any, Any] | None = None  # (model, tokenizer): a tiny real model answers
    ignore_logprobs: bool = False
    # /v1/files and /v1/batches, when set (a fake_batches.FakeBatches)
    batches: Any = None
    # filled in while running
    base_url: str = ""
    port: int = 0
    asked: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)  # last request per prompt
    arrivals: list[Arrival] = field(default_factory=list)
    in_flight: int = 0
    max_seen_in_flight: int = 0
    requests: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    last_query: str = ""  # the query string of the last chat request (Azure: api-version=...)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # ----------------------------------------------------------------------- queries for tests

    def per_second(self, outcome_prefix: str = "") -> list[int]:
        """Requests arriving in each sliding 1-second window that starts at an arrival."""
        times = sorted(a.t for a in self.arrivals if a.outcome.startswith(outcome_prefix))
        counts, j = [], 0
        for i, t in enumerate(times):
            while j < len(times) and times[j] < t + 1.0:
                j += 1
            counts.append(j - i)
        return counts

    def max_per_window(self, window_s: float, tokens: bool = False) -> int:
        """Most requests (or usage tokens) arriving within any `window_s` seconds."""
        arr = sorted(self.arrivals, key=lambda a: a.t)
        best, j, running = 0, 0, 0
        for a in arr:
            while j < len(arr) and arr[j].t < a.t + window_s:
                running += arr[j].tokens if tokens else 1
                j += 1
            best = max(best, running)
            running -= a.tokens if tokens else 1
        return best

    # ----------------------------------------------------------------------- app

    def app(self) -> web.Application:
        # batch input files are up to 200 MB (aiohttp's default cap on a request body is 1 MB)
        app = web.Application(client_max_size=512 * 1024 * 1024)
        if self.batches is not None:
            self.batches.add_routes(app, self)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _pick_fault(self, prompt: str) -> Fault | None:
        nth = self.asked[prompt]  # 1-based: this request is the nth for this prompt
        for f in self.faults:
            if f.match is not None and f.match not in prompt:
                continue
            if f.first is not None and nth > f.first:
                continue
            if f.times is not None and f.fired >= f.times:
                continue
            if f.prob < 1.0 and self._rng.random() >= f.prob:
                continue
            f.fired += 1
            return f
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        self.requests += 1
        if self.record:
            self.last_headers = dict(request.headers)
            self.last_query = request.query_string
        raw = await request.read()
        try:
            body = orjson.loads(raw)
            messages = body["messages"]
            prompt = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _error(400, "could not parse the request body as a chat completion")
        arrival = Arrival(arrived, prompt, seed=body.get("seed"))
        if self.record:
            self.arrivals.append(arrival)
            self.asked[prompt] += 1
            self.bodies[prompt] = body

        auth = request.headers.get("Authorization")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            arrival.outcome = "status 401"
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        model = body.get("model")
        if self.pinned is not None and model not in (None, self.pinned):
            arrival.outcome = "status 400"
            detail = f"Server is pinned to '{self.pinned}'; requested '{model}'."
            return web.json_response({"detail": detail}, status=400)
        if self.pinned is None and model not in self.models:
            arrival.outcome = "status 404"
            return _error(404, f"The model `{model}` does not exist.", "model_not_found")

        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            arrival.outcome = "status 429"
            headers = {}
            if self.limit_retry_after_ms is not None:
                headers["retry-after-ms"] = str(self.limit_retry_after_ms)
            return _error(429, "Rate limit reached: too many requests in flight.", headers=headers)

        self.in_flight += 1
        self.max_seen_in_flight = max(self.max_seen_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            fault = self._pick_fault(prompt) if self.faults else None
            return await self._answer(request, body, messages, prompt, fault, arrival)
        finally:
            self.in_flight -= 1

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        prompt: str,
        fault: Fault | None,
        arrival: Arrival,
    ) -> web.StreamResponse:
        kind = fault.kind if fault else "ok"
        arrival.outcome = kind
        if fault is not None:
            if kind == "status":
                arrival.outcome = f"status {fault.status}"
                headers = {}
                if fault.retry_after is not None:
                    headers["retry-after"] = str(fault.retry_after)
                if fault.retry_after_ms is not None:
                    headers["retry-after-ms"] = str(fault.retry_after_ms)
                msg = fault.message or f"injected {fault.status}"
                return _error(fault.status, msg, fault.code, headers=headers)
            if kind == "drop":
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError  # aiohttp ends the handler quietly
            if kind == "slow":
                await asyncio.sleep(fault.delay)
                arrival.outcome = "ok"
                kind = "ok"
            if kind == "malformed":
                return web.Response(
                    body=b'{"id": "x", "choices": [{"mess', content_type="application/json"
                )
            if kind == "html":
                page = "<!DOCTYPE html><html><body><h1>Welcome</h1></body></html>"
                return web.Response(text=page, content_type="text/html")

        model = body.get("model", "")
        if self.lm is not None:
            return self._lm_answer(body, messages, arrival)
        payload_data, finish, usage = self.completion(body, messages, prompt, kind)
        content = payload_data["choices"][0]["message"]["content"]
        arrival.tokens = usage["total_tokens"]
        if kind == "ok" and finish == "length":
            arrival.outcome = "length"

        if body.get("stream"):
            return await self._stream(request, body, model, content, finish, usage)
        payload = orjson.dumps(payload_data)
        if kind == "truncate":
            resp = web.StreamResponse(
                headers={"Content-Type": "application/json", "Content-Length": str(len(payload))}
            )
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(body=payload, content_type="application/json")

    def completion(
        self, body: dict[str, Any], messages: list[dict[str, Any]], prompt: str, kind: str
    ) -> tuple[dict[str, Any], str, dict[str, int]]:
        """The chat completion for a request (no transport faults): (body, finish, usage).
        `kind` is a fault kind that shapes the answer (empty, length, content_filter) or "ok".
        Also what the batch routes answer each line with (fake_batches.py)."""
        content = self.responder(messages) if self.responder else f"answer to: {prompt}"
        words = content.split()
        if len(words) < self.answer_words:
            words += [f"w{i}" for i in range(self.answer_words - len(words))]
        finish = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        content = " ".join(words)
        if kind == "empty":
            content = ""
        elif kind == "length":
            finish = "length"
        elif kind == "content_filter":
            content, finish = "", "content_filter"
        # "tokens" are words here: deterministic, and cheap enough for the benchmark
        prompt_tokens = sum(_count_words(str(m.get("content", ""))) for m in messages)
        completion_tokens = _count_words(content)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        data = {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }
        return data, finish, usage

    def _lm_answer(
        self, body: dict[str, Any], messages: list[dict[str, Any]], arrival: Arrival
    ) -> web.Response:
        """The tiny model's answer (or, for a scoring request, its prompt logprobs)."""
        import torch

        model, tok = self.lm  # type: ignore[misc]
        if "prompt_logprobs" in body and not self.ignore_logprobs:
            return web.json_response(_lm_score(model, tok, body, messages))
        ids = tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        stop = tok.convert_tokens_to_ids("<|im_end|>")
        max_tokens = int(body.get("max_tokens") or 16)
        torch.manual_seed(int(body.get("seed") or 0) + self.requests)
        with torch.no_grad():
            input_ids = torch.tensor([ids])
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                eos_token_id=stop, pad_token_id=tok.pad_token_id, output_scores=True,
                return_dict_in_generate=True,
                suppress_tokens=[
                    i for i, t in tok.added_tokens_decoder.items() if t.special and i != stop
                ],
            )  # fmt: skip
        new = out.sequences[0, len(ids) :].tolist()
        finish = "stop" if stop in new else "length"
        answer = new[: new.index(stop)] if stop in new else new
        content = tok.decode(answer, skip_special_tokens=True) or "silence"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        if body.get("logprobs") and not self.ignore_logprobs:
            k = int(body.get("top_logprobs") or 0)
            entries = []
            for token, scores in zip(answer, out.scores, strict=False):
                logp = torch.log_softmax(scores[0].float(), -1)
                top = torch.topk(logp, k) if k else None
                entries.append({
                    "token": tok.decode([token]), "logprob": float(logp[token]),
                    "top_logprobs": [] if top is None else [
                        {"token": tok.decode([int(i)]), "logprob": float(v)}
                        for v, i in zip(top.values, top.indices, strict=True)
                    ],
                })  # fmt: skip
            choice["logprobs"] = {"content": entries}
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(new),
                 "total_tokens": len(ids) + len(new)}  # fmt: skip
        arrival.tokens = usage["total_tokens"]
        return web.json_response(
            {"id": f"chatcmpl-{self.requests}", "object": "chat.completion",
             "model": body.get("model"), "choices": [choice], "usage": usage}
        )  # fmt: skip

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        model: str,
        content: str,
        finish: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        base = {"id": f"chatcmpl-{self.requests}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}  # fmt: skip

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await resp.write(
                b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"
            )

        await send(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )
        for i, word in enumerate(content.split(" ") if content else []):
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
            piece = word if i == 0 else " " + word
            await send([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        await send([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _lm_score(model: Any, tok: Any, body: dict[str, Any], messages: list[Any]) -> dict[str, Any]:
    """vLLM's answer to a scoring request: the final assistant message left open
    (`continue_final_message`), the logprob of every prompt token (with the top K), and the
    prompt's token ids."""
    import torch

    text = tok.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    k = max(1, int(body.get("prompt_logprobs") or 1))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    prompt_logprobs: list[Any] = [None]
    for pos in range(1, len(ids)):
        row = logp[pos - 1]
        entry = {str(ids[pos]): {"logprob": float(row[ids[pos]]), "rank": 1,
                                 "decoded_token": tok.decode([ids[pos]])}}  # fmt: skip
        top = torch.topk(row, k)
        for rank, (v, i) in enumerate(zip(top.values, top.indices, strict=True), start=1):
            entry.setdefault(str(int(i)), {"logprob": float(v), "rank": rank,
                                            "decoded_token": tok.decode([int(i)])})  # fmt: skip
        prompt_logprobs.append(entry)
    return {
        "id": "scored", "object": "chat.completion", "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                     "finish_reason": "length"}],
        "prompt_logprobs": prompt_logprobs, "prompt_token_ids": ids,
        "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
    }  # fmt: skip


def _count_words(text: str) -> int:
    """Words separated by single spaces (what the fake's answers are made of); counts without
    building a list, since system prompts are long and the benchmark runs this 1000 times/s."""
    text = text.strip()
    return text.count(" ") + 1 if text else 0


def _error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    err = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return web.Response(
        status=status,
        body=orjson.dumps({"error": err}),
        content_type="application/json",
        headers=headers,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def _serve(server: FakeOpenAI, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=4096).start()
    return runner


def _bind(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    return sock


@contextmanager
def start_fake_server(**options: Any) -> Iterator[FakeOpenAI]:
    """Run a FakeOpenAI(**options) in a background thread; yields it with `base_url` set."""
    server = FakeOpenAI(**options)
    sock = _bind()
    server.port = sock.getsockname()[1]
    server.base_url = f"http://{HOST}:{server.port}/v1"
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        runner_box.append(loop.run_until_complete(_serve(server, sock)))
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner_box[0].cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="fake-openai", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("fake OpenAI server did not start")
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--record", action="store_true", help="keep per-request records")
    ap.add_argument("--max-in-flight", type=int, default=None, help="429 above this")
    ap.add_argument(
        "--batches", type=float, default=None, metavar="S",
        help="also serve /v1/files and /v1/batches; each batch takes S seconds",
    )  # fmt: skip
    args = ap.parse_args(argv)
    server = FakeOpenAI(
        latency=args.latency, models=tuple(args.model or ["fake-teacher"]), record=args.record,
        max_in_flight=args.max_in_flight,
    )  # fmt: skip
    if args.batches is not None:
        from fake_batches import BatchPlan, FakeBatches

        server.batches = FakeBatches([BatchPlan(in_progress_s=args.batches)])
    sock = _bind(args.port)
    print(f"PORT {sock.getsockname()[1]}", flush=True)

    async def forever() -> None:
        await _serve(server, sock)
        await asyncio.Event().wait()

    try:
        asyncio.run(forever())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
