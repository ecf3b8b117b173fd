"""Throughput of the embedded local teacher (`transformers serve`, continuous batching, CPU).

Starts the local teacher exactly as `promptdistill sample` does (running_local_teacher), sends
real Beethoven requests (the ~940-token system prompt + one expanded user prompt each) at a few
concurrency levels with a fixed max_tokens, and reports requests/s and generated tokens/s per
level, with ratios against the concurrency-1 baseline measured in the same run, on the same
server.

    .venv/bin/python benchmarks/local_teacher.py [--concurrency 1,8,32,64] [--max-tokens 64]
        [--dtype auto|bf16|fp32] [--write-docs docs/benchmarks.md]

Each level sends max(4, waves x concurrency) requests (distinct prompts; --waves, default 2),
after one warm-up request
that is not counted: `transformers serve` builds its continuous-batching cache on the first
request, with that request's sampling settings for all later ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptdistill.clients.local_server import running_local_teacher  # noqa: E402
from promptdistill.personas import expand_prompts, load_persona  # noqa: E402

SECTION = "## Local teacher (issue #4)"


@dataclass
class Level:
    concurrency: int
    requests: int
    wall_s: float
    completion_tokens: int
    prompt_tokens: int
    latencies_s: list[float]
    server_cpu_s: float = 0.0  # CPU time the server spent on this level (all its threads)

    @property
    def req_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def tok_per_s(self) -> float:
        return self.completion_tokens / self.wall_s


async def one_request(
    session: aiohttp.ClientSession, url: str, body: dict[str, object]
) -> tuple[float, int, int]:
    started = time.perf_counter()
    async with session.post(url, data=orjson.dumps(body)) as response:
        payload = orjson.loads(await response.read())
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload}")
    usage = payload["usage"]
    return time.perf_counter() - started, usage["completion_tokens"], usage["prompt_tokens"]


async def run_level(url: str, bodies: list[dict[str, object]], concurrency: int) -> Level:
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=900)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as s:

        async def bounded(body: dict[str, object]) -> tuple[float, int, int]:
            async with semaphore:
                return await one_request(s, url, body)

        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(b) for b in bodies))
        wall = time.perf_counter() - started
    return Level(
        concurrency=concurrency,
        requests=len(bodies),
        wall_s=wall,
        completion_tokens=sum(r[1] for r in results),
        prompt_tokens=sum(r[2] for r in results),
        latencies_s=[r[0] for r in results],
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(levels: list[Level]) -> str:
    base = levels[0]
    rows = [
        "| concurrency | requests | wall s | req/s | generated tok/s | mean latency s "
        "| req/s vs c=1 | tok/s vs c=1 | server CPU s / request |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        rows.append(
            f"| {lv.concurrency} | {lv.requests} | {lv.wall_s:.1f} | {lv.req_per_s:.2f} "
            f"| {lv.tok_per_s:.1f} | {statistics.mean(lv.latencies_s):.1f} "
            f"| {lv.req_per_s / base.req_per_s:.2f}x | {lv.tok_per_s / base.tok_per_s:.2f}x "
            f"| {lv.server_cpu_s / lv.requests:.2f} |"
        )
    return "\n".join(rows)


def write_docs(path: Path, text: str) -> None:
    """Replace only this script's section (up to the next '## ' heading); keep the others."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text.rstrip("\n") + "\n\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    path.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated levels")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--waves", type=int, default=2, help="requests per level: waves x c")
    parser.add_argument("--persona", default="beethoven")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto", help="auto, bf16 or fp32")
    parser.add_argument(
        "--kv-cache-tokens", type=int, default=None, help="0: transformers' own sizing"
    )
    parser.add_argument(
        "--max-batch-tokens", type=int, default=None, help="0: transformers' own sizing"
    )
    parser.add_argument("--write-docs", type=Path, default=None, help="e.g. docs/benchmarks.md")
    args = parser.parse_args()
    levels_wanted = [int(c) for c in args.concurrency.split(",")]

    persona = load_persona(args.persona)
    sampling = persona.persona.sampling
    total = 1 + sum(max(4, args.waves * c) for c in levels_wanted)
    prompts = expand_prompts(persona, total, seed=0)

    def body(text: str) -> dict[str, object]:
        return {
            "messages": [
                {"role": "system", "content": persona.persona.system_prompt},
                {"role": "user", "content": text},
            ],
            "max_tokens": args.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }

    load_before = load_average()
    print(f"load average before: {load_before} ({os.cpu_count()} cores)", flush=True)
    started = time.perf_counter()
    extra = {
        k: v
        for k, v in {
            "kv_cache_tokens": args.kv_cache_tokens,
            "max_batch_tokens": args.max_batch_tokens,
        }.items()
        if v is not None
    }
    with running_local_teacher(args.model, log=print, dtype=args.dtype, **extra) as teacher:
        startup_s = time.perf_counter() - started
        url = f"{teacher.base_url}/chat/completions"
        bodies = [{"model": teacher.model, **body(p.text)} for p in prompts]
        warm = asyncio.run(run_level(url, bodies[:1], 1))
        print(f"server up in {startup_s:.1f}s; first request {warm.wall_s:.1f}s", flush=True)
        levels: list[Level] = []
        offset = 1
        for c in levels_wanted:
            n = max(4, args.waves * c)
            cpu_before = cpu_seconds(teacher.process.pid)
            level = asyncio.run(run_level(url, bodies[offset : offset + n], c))
            level.server_cpu_s = cpu_seconds(teacher.process.pid) - cpu_before
            offset += n
            levels.append(level)
            print(
                f"concurrency {c}: {level.requests} requests in {level.wall_s:.1f}s, "
                f"{level.req_per_s:.2f} req/s, {level.tok_per_s:.1f} generated tok/s, "
                f"server CPU {level.server_cpu_s / level.requests:.2f} s/request",
                flush=True,
            )
    load_after = load_average()
    prompt_tokens = levels[0].prompt_tokens / levels[0].requests
    command = shlex.join(
        [".venv/bin/python", "benchmarks/local_teacher.py", *sys.argv[1:]]
    ).replace(" --write-docs docs/benchmarks.md", "")
    report = "\n".join(
        [
            SECTION,
            "",
            "Command (from the repository root):",
            "",
            f"    {command}",
            "",
            f"Workload: `transformers serve` started by `running_local_teacher` (continuous "
            f"batching, CPU, dtype {args.dtype}), model `{args.model}`; real `{args.persona}` "
            f"requests: its system prompt + one expanded user prompt, {prompt_tokens:.0f} prompt "
            f"tokens on average, `max_tokens` {args.max_tokens}, temperature "
            f"{sampling.temperature}, top_p {sampling.top_p}. Each level sends max(4, "
            f"{args.waves} x concurrency) distinct requests through one aiohttp session; the "
            f"ratios are against concurrency 1 in the same run, on the same server. Server CPU "
            f"s / request is the server process's CPU time (all threads) per request; it "
            f"depends less on other jobs than wall time does, but torch's spinning threads "
            f"inflate it on an oversubscribed machine.",
            "",
            f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} "
            f"cores, load average {load_before} before and {load_after} after. Server start-up "
            f"(model load until /health answers): {startup_s:.1f} s; first request (builds the "
            f"KV cache, not counted): {warm.wall_s:.1f} s.",
            "",
            table(levels),
            "",
        ]
    )
    print()
    print(report)
    if args.write_docs is not None:
        write_docs(args.write_docs, report)
        print(f"wrote {args.write_docs}")


if __name__ == "__main__":
    main()
