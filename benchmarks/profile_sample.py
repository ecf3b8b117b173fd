"""Where `promptdistill sample`'s client CPU goes per request (issue #15), load-independent.

Runs the CLI (in this process, under cProfile with a CPU-time clock, so that time spent waiting
for a busy machine's CPU is not counted) against tests/fake_openai.py in its own process, and
splits the engine workers' CPU between aiohttp and promptdistill's own per-request code.

    .venv/bin/python benchmarks/profile_sample.py [--prompts 5000] [--concurrency 128]
        [--latency 0.1]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# promptdistill's per-request functions, by what they do (module path, function name)
OURS = {
    "sample record written": [("sampling/sample.py", "on_sample")],
    "answer checked and parsed": [
        ("clients/endpoint.py", "_parse"),
        ("clients/endpoint.py", "_check_content_type"),
    ],  # fmt: skip
    "endpoint pool": [
        ("sampling/pool.py", "acquire"),
        ("sampling/pool.py", "release"),
        ("sampling/pool.py", "on_success"),
    ],  # fmt: skip
    "limits, request body, token estimate": [
        ("sampling/limits.py", "reserve"),
        ("sampling/limits.py", "adjust"),
        ("sampling/requests.py", "body"),
        ("sampling/limits.py", "estimate_tokens"),
    ],  # fmt: skip
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--latency", type=float, default=0.1)
    args = ap.parse_args()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(args.latency)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    profile = cProfile.Profile(time.process_time)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sys.argv = [
                "promptdistill", "sample", "beethoven", "--run", f"{tmp}/run",
                "-n", str(args.prompts), "--base-url", f"http://127.0.0.1:{port}/v1",
                "--model", "fake-teacher", "--concurrency", str(args.concurrency),
                "--no-heldout", "--log-every", "60",
            ]  # fmt: skip
            profile.enable()
            try:
                runpy.run_module("promptdistill", run_name="__main__")
            except SystemExit as e:
                if e.code:
                    raise
            finally:
                profile.disable()
    finally:
        server.terminate()
        server.wait()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]

    def cum(path: str, name: str) -> float:
        return sum(v[3] for (f, _, n), v in stats.items() if f.endswith(path) and n == name)

    workers = cum("sampling/engine.py", "_worker")
    # the time in aiohttp functions called from the transport (each entry's callers map
    # gives the cumulative time per caller)
    aio = 0.0
    for (f, _, _n), v in stats.items():
        for (cf, _, cn), c in v[4].items():
            if cf.endswith("clients/endpoint.py") and cn == "_chat" and "aiohttp" in f:
                aio += c[3]
    print(
        f"{args.prompts} prompts, {args.concurrency} in flight, {args.latency} s latency; "
        f"engine workers' CPU under the profiler: {workers:.2f} s "
        f"({workers / args.prompts * 1e6:.0f} us/request)"
    )
    rows = [("aiohttp (request, headers, payload, connection, response, body)", aio)]
    rows += [(what, sum(cum(p, n) for p, n in fns)) for what, fns in OURS.items()]
    rows.append(("the rest (the engine's and transport's own steps)",
                 workers - sum(t for _, t in rows)))  # fmt: skip
    for what, t in rows:
        print(f"  {what:<66} {t:6.2f} s {100 * t / workers:5.1f}%")


if __name__ == "__main__":
    main()
