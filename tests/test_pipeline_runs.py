"""`promptdistill runs` with broken run folders (issue #16): the healthy runs are listed, each
broken one is flagged with the file at fault, and nothing is a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from tiny import write_samples


def _run(root: Path, name: str, config: bytes, report: bytes | None = None) -> Path:
    run = root / name
    write_samples(run / "samples.jsonl", 3)
    (run / "config.yaml").write_bytes(config)
    if report is not None:
        (run / "report.json").write_bytes(report)
    return run


def test_runs_lists_the_healthy_and_flags_the_broken(tmp_path: Path) -> None:
    good_config = b"sample:\n  persona: beethoven\n  n: 3\n"
    summary = {"summary": {"prompt_effect_recovered": 0.87, "persona_classifier_student": 0.6}}
    _run(tmp_path, "a-good", good_config, orjson.dumps(summary))
    _run(tmp_path, "b-corrupt-report", good_config, b'{"summary": {"prompt_eff')
    _run(tmp_path, "c-bad-yaml", b"sample:\n  persona: [beethoven\n")
    _run(tmp_path, "d-not-utf8", b"sample:\n  persona: beeth\xf6ven\n")
    bad_line = _run(tmp_path, "e-bad-samples", good_config)
    with (bad_line / "samples.jsonl").open("ab") as f:
        f.write(b"not json\n" + orjson.dumps({"id": "x", "messages": []}) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "promptdistill", "runs", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines()
            if line.count("│") > 2}  # fmt: skip
    good = next(line for name, line in rows.items() if name.endswith("a-good"))
    assert "beethoven" in good and "3 answered (n=3)" in good and "0.87" in good
    broken = [name for name, line in rows.items() if "broken" in line]
    assert len(broken) == 4
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 4 and all(w.startswith("warning: ") for w in warnings)
    said = " ".join(warnings)
    assert f"{tmp_path / 'b-corrupt-report' / 'report.json'}: not valid JSON" in said
    assert f"{tmp_path / 'c-bad-yaml' / 'config.yaml'}:2: YAML syntax error" in said
    assert f"{tmp_path / 'd-not-utf8' / 'config.yaml'}: not UTF-8" in said
    assert f"{tmp_path / 'e-bad-samples' / 'samples.jsonl'}:4: not valid JSON" in said
