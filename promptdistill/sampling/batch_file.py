"""`sample --write-batch-file F` and `sample --read-batch-file F` (issue #15).

Sampling with no server: write the run's unanswered prompts as an OpenAI-format batch file,
answer it anywhere (`vllm run-batch -i F -o results.jsonl --model M` on a GPU node, or the Batch
API's web console), then read the results back. promptdistill still owns the ids, exactly-once
and resume: reading merges each prompt's answer once, in any order, and a second
`--write-batch-file` writes only what is still unanswered.
"""

from __future__ import annotations

from pathlib import Path

from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_bytes
from promptdistill.sampling.batch_lines import (
    BatchWork,
    merge_results,
    numbered,
    record_failures,
    request_lines,
)

# what the Batch API takes in one input file (the web console too)
API_MAX_REQUESTS = 50_000
API_MAX_BYTES = 200_000_000
SHOWN = 10  # failed lines listed on the terminal (all of them go to failures.jsonl)


def write_batch_file(work: BatchWork, path: Path) -> None:
    """The unanswered prompts as batch requests in `path` (atomically); no calls are made."""
    data = b"".join(request_lines(work.jobs, work.body))
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise UserError(f"--write-batch-file {path}: cannot write it ({e.strerror or e})") from None
    s = work.summary
    s.base_url = f"batch file {path}"
    s.rows.append(("batch file written", f"{path}: {len(work.jobs)} requests, {_mb(len(data))}"))
    s.written = len(work.jobs)
    if len(work.jobs) > API_MAX_REQUESTS or len(data) > API_MAX_BYTES:
        work.say(
            f"[yellow]note:[/] {path} holds more than the Batch API takes in one file "
            f"({API_MAX_REQUESTS} requests, 200 MB); `vllm run-batch` reads it whole, and "
            "`sample --batch-api` splits it by itself"
        )


def read_batch_file(work: BatchWork, path: Path) -> None:
    """Merge a results file into samples.jsonl: each prompt once, whatever the order; failed
    lines go to failures.jsonl (asked again by the next command) and are listed."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(
            f"--read-batch-file {path}: cannot read it ({e.strerror or e}); pass the output "
            "of `vllm run-batch -o FILE` or the Batch API's output file"
        ) from None
    s = work.summary
    s.base_url = f"batch file {path}"
    jobs = {j.id: j for j in work.jobs}
    pending = dict(jobs)
    records = work.open_records()
    try:
        merged = merge_results(
            numbered(data), str(path), pending, work.done_ids, records, bool(work.config.logprobs)
        )
        s.failed = record_failures(merged, jobs, records)
    finally:
        records.close()
    s.answered_now = merged.answered
    s.truncated = merged.truncated
    s.pending = len(pending) - s.failed
    s.batch_input_tokens += merged.input_tokens
    s.batch_output_tokens += merged.output_tokens
    lines = merged.answered + merged.failed + merged.already + len(merged.bad)
    s.rows.append(("batch file read", f"{path}: {lines} lines"))
    if merged.already:
        s.rows.append(("lines for prompts already answered (skipped)", str(merged.already)))
    if merged.bad:
        s.rows.append(("lines that fit no prompt of this run", str(len(merged.bad))))
    problems = merged.failed_lines + merged.bad
    for line in problems[:SHOWN]:
        work.say(f"[yellow]{path}:[/] {line}")
    if len(problems) > SHOWN:
        work.say(f"[yellow]{path}:[/] ... and {len(problems) - SHOWN} more (see failures.jsonl)")
    if merged.bad and not merged.answered and not merged.already:
        raise UserError(
            f"--read-batch-file {path}: none of its {len(merged.bad)} lines is an answer to a "
            "prompt of this run (first: "
            f"{merged.bad[0]}); pass the persona, -n and --prompt-seed the batch file was "
            "written with"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
