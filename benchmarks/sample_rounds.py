"""Where a fixed-latency endpoint's "ideal" goes: the bare aiohttp loop, request by request.

`benchmarks/sample.py` compares clients with an ideal of concurrency / latency (512 / 0.5 s =
1024 req/s). That ideal is not reachable by any client on its workload, and this script says
how far it is and why, from one timed request at a time (issue #15, item 3):
- rounds: with every worker starting together and a fixed latency, the requests go in waves;
  5000 prompts over 512 workers are 10 rounds (the last one partial), so even a client that
  costs nothing needs ceil(N / C) x latency: 5.0 s, 97.7% of the ideal;
- the first round: all C connections are opened at once, so its requests wait for C
  connection set-ups on the client and the endpoint;
- each later round: a wave of C answers is read and the next C requests sent, one at a time.

    .venv/bin/python benchmarks/sample_rounds.py [--prompts 5000] [--concurrency 512]
        [--latency 0.5] [--runs 3]

The endpoint runs on CPU 1 and this client on CPU 0, as in benchmarks/sample.py.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from sample import MODEL, raw_aiohttp, start_server  # noqa: E402

from promptdistill.personas import expand_prompts, load_persona  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    pinned = len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {0})
    loaded = load_persona("beethoven")
    system = loaded.persona.system_prompt
    bodies = [
        orjson.dumps({"model": MODEL, "temperature": 0.8, "top_p": 0.95, "max_tokens": 256,
                      "messages": [{"role": "system", "content": system},
                                   {"role": "user", "content": p.text}]})
        for p in expand_prompts(loaded, a.prompts, 0)
    ]  # fmt: skip
    ideal = a.prompts / (a.concurrency / a.latency)
    rounds = math.ceil(a.prompts / a.concurrency)
    floor = rounds * a.latency
    print(
        f"{a.prompts} prompts, {a.concurrency} in flight, {a.latency} s: ideal {ideal:.2f} s; "
        f"{rounds} rounds need {floor:.2f} s ({ideal / floor:.1%} of the ideal) at best"
    )
    server, base = start_server(a.latency, 1 if pinned else None)
    try:
        asyncio.run(raw_aiohttp(base, bodies[: a.concurrency + 64], a.concurrency))  # warm up
        for k in range(a.runs):
            done: list[tuple[float, float]] = []
            t0 = time.perf_counter()
            asyncio.run(raw_aiohttp(base, bodies, a.concurrency, done))
            wall = time.perf_counter() - t0
            first = [lat for sent, lat in done if sent < a.latency / 2]
            later = [lat for sent, lat in done if sent >= a.latency / 2]
            print(
                f"run {k + 1}: {wall:.2f} s, {a.prompts / wall:.0f} req/s ({ideal / wall:.1%} of "
                f"the ideal, {floor / wall:.1%} of the rounds' floor); first round: "
                f"{len(first)} requests, mean latency {statistics.mean(first):.3f} s "
                f"(+{statistics.mean(first) - a.latency:.3f}); later: mean "
                f"{statistics.mean(later):.3f} s (+{statistics.mean(later) - a.latency:.3f})",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
