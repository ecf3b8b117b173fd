"""Benchmark `promptdistill sample` against a naive asyncio.gather + AsyncOpenAI baseline.

Workload (issue #3): a loopback OpenAI-compatible endpoint that answers after 0.5 s, 512
requests in flight, 5000 prompts. Its ceiling is 512 / 0.5 = 1024 req/s. The endpoint runs in a
separate process (tests/fake_openai.py), so it never shares an event loop with a client.

In real use the endpoint is another machine. Here it shares the 2 cores with the client, so by
default (`--pin`, on machines with at least 2 CPUs) the endpoint runs on CPU 1 and everything
else (this script, the baseline, the bare loop and the CLI) on CPU 0: the endpoint's own CPU
work then does not land on the client's core. Every client gets the same treatment;
`--no-pin` lets the OS schedule both freely.

Measured, in the same run and against the same endpoint:
- `promptdistill sample` as a user runs it: a CLI subprocess, timed end to end (interpreter
  start-up, persona expansion, writing samples.jsonl), and its sampling phase alone (from the
  first request to the last answer, as printed in its summary);
- a reference ceiling for the machine: the bare aiohttp + orjson loop the engine is built on;
- the baseline most scripts use: `asyncio.gather` over every prompt, an asyncio.Semaphore(512),
  and `AsyncOpenAI` with its default client (httpx, max_retries=2).

    .venv/bin/python benchmarks/sample.py [--prompts 5000] [--concurrency 512] [--latency 0.5]
        [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptdistill.personas import expand_prompts, load_persona  # noqa: E402

MODEL = "fake-teacher"


def start_server(latency: float, cpu: int | None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu})),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(line.split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


def run_cli(
    base_url: str, persona: str, n: int, concurrency: int
) -> tuple[float, float, int, float]:
    """(wall seconds end to end, sampling-phase seconds, samples written, CPU seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "promptdistill", "sample", persona, "--run", str(run),
            "-n", str(n), "--base-url", base_url, "--model", MODEL,
            "--concurrency", str(concurrency), "--no-heldout", "--log-every", "60",
        ]  # fmt: skip
        cpu0 = _children_cpu()
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        cpu = _children_cpu() - cpu0
        if result.returncode != 0:
            raise SystemExit(f"the CLI failed:\n{result.stdout}\n{result.stderr}")
        text = " ".join(result.stdout.split())
        m = re.search(r"sampling phase[ │|]+([\d.]+) req/s over ([\d.]+) s", text)
        if not m:
            raise SystemExit(f"no sampling phase in the CLI summary:\n{result.stdout}")
        written = (run / "samples.jsonl").read_bytes().count(b"\n")
    return wall, float(m.group(2)), written, cpu


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


async def baseline(base_url: str, messages: list[list[dict[str, str]]], concurrency: int) -> int:
    """What most scripts do: gather every prompt, a semaphore, the SDK's default client."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="benchmark")
    semaphore = asyncio.Semaphore(concurrency)

    async def one(m: list[dict[str, str]]) -> str:
        async with semaphore:
            r = await client.chat.completions.create(
                model=MODEL,
                messages=m,
                temperature=0.8,
                top_p=0.95,
                max_tokens=256,  # type: ignore[arg-type]
            )
            return r.choices[0].message.content or ""

    # return_exceptions: under load the SDK's default client can time out (and retry twice);
    # count what it answered instead of crashing
    answers = await asyncio.gather(*(one(m) for m in messages), return_exceptions=True)
    await client.close()
    return sum(1 for a in answers if isinstance(a, str) and a)


async def raw_aiohttp(
    base_url: str, bodies: list[bytes], concurrency: int,
    timings: list[tuple[float, float]] | None = None,
) -> int:  # fmt: skip
    """Reference ceiling for this machine: the bare aiohttp + orjson loop the engine is built on
    (no limits, no retries, nothing written), `concurrency` workers over one session. With
    `timings`, each request's (sent, latency) in seconds from the start goes there."""
    import aiohttp
    import orjson

    connector = aiohttp.TCPConnector(limit=concurrency)
    url = base_url + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    answered = 0
    it = iter(bodies)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal answered
            for body in it:
                sent = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    data = orjson.loads(await r.read())
                answered += bool(data["choices"][0]["message"]["content"])
                if timings is not None:
                    timings.append((sent - start, time.perf_counter() - sent))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--persona", default="beethoven")
    ap.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True,
        help="endpoint on CPU 1, clients on CPU 0 (default when there are 2+ CPUs)",
    )  # fmt: skip
    args = ap.parse_args()
    ideal = args.concurrency / args.latency
    pinned = args.pin and len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {0})  # inherited by the CLI subprocess

    loaded = load_persona(args.persona)
    system = loaded.persona.system_prompt
    prompts = expand_prompts(loaded, args.prompts, 0)
    messages = [
        [{"role": "system", "content": system}, {"role": "user", "content": p.text}]
        for p in prompts
    ]

    server, base_url = start_server(args.latency, 1 if pinned else None)
    try:
        # warm the server's process (imports, first connections) before timing anything
        asyncio.run(baseline(base_url, messages[:64], 64))

        cpu0, start = time.process_time(), time.perf_counter()
        answered = asyncio.run(baseline(base_url, messages, args.concurrency))
        base_s = time.perf_counter() - start
        base_cpu = time.process_time() - cpu0

        wall, sampling_s, written, cli_cpu = run_cli(
            base_url, args.persona, args.prompts, args.concurrency
        )
        assert written == args.prompts, written

        import orjson

        bodies = [
            orjson.dumps({"model": MODEL, "messages": m, "temperature": 0.8, "top_p": 0.95,
                          "max_tokens": 256})
            for m in messages
        ]  # fmt: skip
        cpu0, start = time.process_time(), time.perf_counter()
        assert asyncio.run(raw_aiohttp(base_url, bodies, args.concurrency)) == args.prompts
        raw_s = time.perf_counter() - start
        raw_cpu = time.process_time() - cpu0
    finally:
        server.terminate()
        server.wait()

    # client CPU per request is the load-independent part: what the client itself costs
    rows = [
        ("baseline: gather + Semaphore + AsyncOpenAI", answered / base_s, base_cpu / answered),
        ("promptdistill sample, sampling phase", args.prompts / sampling_s, None),
        ("promptdistill sample, whole command", args.prompts / wall, cli_cpu / args.prompts),
        ("reference: bare aiohttp + orjson loop", args.prompts / raw_s, raw_cpu / args.prompts),
    ]
    base_rate = rows[0][1]
    print(
        f"{args.prompts} prompts, {args.concurrency} in flight, {args.latency} s latency: "
        f"ideal {ideal:.0f} req/s; "
        + ("endpoint on CPU 1, clients on CPU 0" if pinned else "not pinned")
    )
    print(f"{'client':<44} {'req/s':>8} {'% of ideal':>11} {'vs baseline':>12} {'CPU us/req':>11}")
    for name, rate, cpu in rows:
        shown = f"{cpu * 1e6:11.0f}" if cpu is not None else f"{'':>11}"
        print(
            f"{name:<44} {rate:8.0f} {100 * rate / ideal:10.1f}% {rate / base_rate:11.2f}x {shown}"
        )
    print(f"(whole command: {wall:.2f} s incl. start-up; sampling phase {sampling_s:.2f} s;")
    print(" its CPU us/req includes start-up)")
    if answered < args.prompts:
        print(f"(the baseline answered only {answered} of {args.prompts}; the rest failed)")


if __name__ == "__main__":
    main()
