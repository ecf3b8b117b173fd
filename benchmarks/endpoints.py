"""Benchmark `promptdistill sample` over several endpoints at once (issue #15).

Each endpoint is a fake OpenAI-compatible server (tests/fake_openai.py) in its own process with
a fixed capacity: it answers after `latency` seconds and refuses (429) more than `limit`
requests in flight, so it serves at most limit / latency requests per second. The aggregate of
`promptdistill sample` over all of them (one engine, each request to the endpoint with the
fewest in flight) is compared with

- the ideal: the sum of the endpoints' capacities (issue #15 asks for >= 0.9 of it), and
- the baseline, measured in the same run: the same CLI against each endpoint alone, summed.

Two ways to tell the client each endpoint's limit:
- `given`: a file of URLs with each endpoint's concurrency (`URL N`), what a user with known
  replicas writes;
- `aimd`: one `--concurrency` for all, above every limit, so each endpoint's AIMD has to find
  its limit from the 429s.

    nice -n 15 .venv/bin/python benchmarks/endpoints.py [--seconds 8] [--modes given,aimd]
        [--sets 2,4] [--slower 1] [--no-pin]

Endpoints run on CPU 1 and the client on CPU 0 (machines with 2+ CPUs), as in sample.py.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixtures_openai import write_persona  # noqa: E402

# (requests in flight at most, latency s): capacities 160 + 160; 160 + 80 + 120 + 80
SETS = {
    2: [(32, 0.2), (64, 0.4)],
    4: [(32, 0.2), (16, 0.2), (48, 0.4), (24, 0.3)],
}


def start(limit: int, latency: float, cpu: int | None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(latency),
         "--max-in-flight", str(limit)],
        stdout=subprocess.PIPE, text=True,
        preexec_fn=None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu})),
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline().split()[1])}/v1"


def sample(persona: Path, n: int, urls: list[str], extra: list[str]) -> tuple[float, float, int]:
    """(sampling-phase req/s, whole-command req/s, 429s) of one CLI run."""
    with tempfile.TemporaryDirectory() as tmp:
        flags = [a for u in urls for a in ("--base-url", u)]
        cmd = [sys.executable, "-m", "promptdistill", "sample", str(persona), "--run",
               f"{tmp}/run", "-n", str(n), "--model", "fake-teacher", "--no-heldout",
               "--log-every", "60", *flags, *extra]  # fmt: skip
        start_t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "COLUMNS": "200"})  # fmt: skip
        wall = time.perf_counter() - start_t
        if r.returncode != 0:
            raise SystemExit(f"the CLI failed:\n{r.stdout}\n{r.stderr}")
        text = " ".join(r.stdout.split())
        m = re.search(r"sampling phase[ │|]+([\d.]+) req/s", text)
        rl = re.search(r"retries / 429s[ │|]+\d+ / (\d+)", text)
        assert m and rl, r.stdout
        return float(m.group(1)), n / wall, int(rl.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="ideal sampling time per run")
    ap.add_argument("--modes", default="given,aimd")
    ap.add_argument("--sets", default="2,4")
    ap.add_argument(
        "--slower",
        type=float,
        default=1.0,
        help="multiply every latency (less CPU per second, for a loaded machine)",
    )
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="endpoints on CPU 1, the client on CPU 0 (with 2+ CPUs)")  # fmt: skip
    args = ap.parse_args()
    pinned = args.pin and len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp())
    persona = write_persona(tmp, "bench", values=250)  # 62,500 distinct prompts
    print(("endpoints on CPU 1, client on CPU 0" if pinned else "not pinned")
          + f"; load average {os.getloadavg()[0]:.1f}; latencies x{args.slower:g}")  # fmt: skip
    print(f"{'endpoints':<10} {'mode':<6} {'ideal':>7} {'alone, sum':>11} {'together':>9} "
          f"{'% ideal':>8} {'vs alone':>9} {'whole cmd':>10} {'429s':>6}")  # fmt: skip
    for k in (int(x) for x in args.sets.split(",")):
        caps = [(limit, lat * args.slower) for limit, lat in SETS[k]]
        servers = [start(limit, lat, 1 if pinned else None) for limit, lat in caps]
        try:
            ideal = sum(limit / lat for limit, lat in caps)
            alone = 0.0
            for (limit, lat), (_, url) in zip(caps, servers, strict=True):
                n = int(limit / lat * args.seconds)
                alone += sample(persona, n, [url], ["--concurrency", str(limit)])[0]
            n = int(ideal * args.seconds)
            for mode in args.modes.split(","):
                if mode == "given":
                    listing = tmp / f"urls-{k}.txt"
                    listing.write_text("".join(f"{url} {limit}\n" for (limit, _), (_, url)
                                               in zip(caps, servers, strict=True)))  # fmt: skip
                    together, whole, limited = sample(persona, n, [str(listing)], [])
                else:
                    top = str(2 * max(limit for limit, _ in caps))
                    urls = [url for _, url in servers]
                    together, whole, limited = sample(persona, n, urls, ["--concurrency", top])
                print(f"{k:<10} {mode:<6} {ideal:7.0f} {alone:11.0f} {together:9.0f} "
                      f"{100 * together / ideal:7.1f}% {together / alone:8.2f}x {whole:10.0f} "
                      f"{limited:6d}")  # fmt: skip
        finally:
            for proc, _ in servers:
                proc.terminate()
                proc.wait()
    print(
        f"(req/s; {args.seconds:g} s of ideal sampling per run; 'alone, sum': each endpoint "
        "alone at its limit, summed; 'together': the sampling phase over all of them)"
    )


if __name__ == "__main__":
    main()
