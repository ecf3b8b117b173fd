"""Benchmark submitting 50,000 requests to the Batch API (issue #15): preparation and upload,
not the server's processing.

The endpoint is the fake server (tests/fake_openai.py --batches S: /v1/files and /v1/batches,
batches that take S seconds, far longer than the benchmark) in its own process. Each request
carries the beethoven persona's system prompt (~3.8 kB), as sampling sends it, so 50,000 of
them are ~200 MB: two input files at OpenAI's 200 MB limit.

Measured in the same run:
- `promptdistill sample --batch-api` as a user runs it: a CLI subprocess, from its start until
  RUN/batches.json records every batch id (start-up, prompt expansion, building the lines,
  uploads, creates), and the part it reports itself ("submitted ... in T s": building,
  splitting, uploading and creating, after start-up);
- the baseline a script would be: stdlib `json.dumps` per line into a file, split into files
  of 25,000 lines, each uploaded with the SDK's `files.create` and made a batch.

    nice -n 15 .venv/bin/python benchmarks/batch_submit.py [--requests 50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptdistill.personas import expand_prompts, load_persona  # noqa: E402

MODEL = "fake-teacher"


def make_persona(root: Path) -> Path:
    """beethoven's system prompt over a prompt set with 62,500 distinct prompts."""
    system = load_persona("beethoven").persona.system_prompt
    (root / "personas").mkdir(parents=True)
    (root / "prompts").mkdir()
    slots = {"a": [f"a{i}" for i in range(250)], "b": [f"b{i}" for i in range(250)]}
    (root / "prompts" / "bench.yaml").write_text(yaml.safe_dump({
        "name": "bench", "categories": {"ask": {"templates": ["Tell me about {a} and {b}."],
                                                "slots": slots}},
    }))  # fmt: skip
    path = root / "personas" / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bench", "description": "benchmark", "system_prompt": system,
        "prompt_sets": ["bench"],
    }))  # fmt: skip
    return path


def start_server(cpu: int | None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--batches", "36000"],
        stdout=subprocess.PIPE, text=True,
        preexec_fn=None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu})),
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline().split()[1])}/v1"


def run_cli(persona: Path, n: int, base_url: str) -> tuple[float, float, int, float]:
    """(seconds until every batch is recorded, the CLI's own submit seconds, batches, MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "run" / "batches.json"
        cmd = [sys.executable, "-m", "promptdistill", "sample", str(persona), "--run",
               f"{tmp}/run", "-n", str(n), "--no-heldout", "--base-url", base_url, "--model",
               MODEL, "--batch-api", "--batch-poll", "600"]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT)  # fmt: skip
        while True:  # until the ids of every request are recorded with their batch
            if record.exists():
                try:
                    batches = orjson.loads(record.read_bytes())["batches"]
                except orjson.JSONDecodeError:
                    batches = []
                if sum(len(b["ids"]) for b in batches if b["batch_id"]) == n:
                    break
            if proc.poll() is not None:
                raise SystemExit(f"the CLI exited: {proc.communicate()}")
            time.sleep(0.01)
        wall = time.perf_counter() - start
        proc.send_signal(signal.SIGINT)  # it polls now: leave the batches, exit
        out, err = proc.communicate(timeout=120)
        m = re.search(r"submitted (\d+) requests in (\d+) batches \(([\d.]+) MB\) in ([\d.]+) s",
                      " ".join(out.split()))  # fmt: skip
        if not m or int(m.group(1)) != n:
            raise SystemExit(f"no submit line in the CLI's output:\n{out}\n{err}")
        return wall, float(m.group(4)), int(m.group(2)), float(m.group(3))


def baseline(persona: Path, n: int, base_url: str, per_file: int = 25_000) -> float:
    """stdlib json per line, files of `per_file` lines, the SDK's upload and create."""
    from openai import OpenAI

    loaded = load_persona(str(persona))
    system = loaded.persona.system_prompt
    start = time.perf_counter()
    prompts = expand_prompts(loaded, n, 0)
    client = OpenAI(base_url=base_url, api_key="benchmark")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(0, n, per_file):
            path = Path(tmp) / f"in-{i}.jsonl"
            with path.open("w") as f:
                for p in prompts[i : i + per_file]:
                    body = {"model": MODEL, "temperature": 0.8, "top_p": 0.95, "max_tokens": 256,
                            "messages": [{"role": "system", "content": system},
                                         {"role": "user", "content": p.text}]}  # fmt: skip
                    line = {"custom_id": p.id, "method": "POST", "url": "/v1/chat/completions",
                            "body": body}  # fmt: skip
                    f.write(json.dumps(line) + "\n")
            with path.open("rb") as f:
                uploaded = client.files.create(file=f, purpose="batch")
            client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
    client.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    pinned = len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {0})
    persona = make_persona(Path(tempfile.mkdtemp()))
    walls, own, bases = [], [], []
    for _ in range(args.runs):  # a fresh server each round: it keeps every upload in memory
        server, url = start_server(1 if pinned else None)
        try:
            wall, submit_s, batches, mb = run_cli(persona, args.requests, url)
            walls.append(wall)
            own.append(submit_s)
        finally:
            server.terminate()
            server.wait()
        server, url = start_server(1 if pinned else None)
        try:
            bases.append(baseline(persona, args.requests, url))
        finally:
            server.terminate()
            server.wait()

    def show(xs: list[float]) -> str:
        return f"{statistics.median(xs):6.2f} s (range {min(xs):.2f}-{max(xs):.2f})"

    print(f"{args.requests} requests, {mb:.0f} MB in {batches} batches; "
          + ("server on CPU 1, clients on CPU 0" if pinned else "not pinned")
          + f"; median of {args.runs} runs")  # fmt: skip
    print(f"promptdistill, whole command until recorded: {show(walls)}")
    print(f"promptdistill, its own submit (after start-up): {show(own)}")
    print(f"baseline: json.dumps + SDK upload/create:      {show(bases)}")
    base = statistics.median(bases)
    print(f"baseline time / promptdistill time: whole command {base / statistics.median(walls):.2f}"
          f", its own submit {base / statistics.median(own):.2f} (above 1: promptdistill is "
          "faster; the baseline runs in this process, with no start-up)")  # fmt: skip


if __name__ == "__main__":
    main()
