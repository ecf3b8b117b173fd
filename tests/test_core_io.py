"""The run directory survives crashes: atomic writes, torn JSONL lines, redaction."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptdistill.core.errors import UserError
from promptdistill.core.io import JsonlWriter, atomic_write_json, read_jsonl, repair_jsonl
from promptdistill.core.redact import redact, redact_url
from promptdistill.core.rundir import RunDir


def test_jsonl_roundtrip_and_append(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": "a", "text": "é ☃"})
    with JsonlWriter(path) as w:
        w.write({"id": "b"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    assert list(read_jsonl(tmp_path / "missing.jsonl")) == []


@pytest.mark.parametrize("torn", [b'{"id": "c", "te', b'{"id": "c"}', b"\x00\x00garbage\n"])
def test_torn_last_line_is_ignored_then_cut_off(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n' + torn)
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    with JsonlWriter(path) as w:  # opening for append repairs the file first
        w.write({"id": "c"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    assert path.read_bytes().endswith(b'{"id":"c"}\n')


def test_corruption_in_the_middle_is_reported_not_skipped(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(UserError, match=r"samples.jsonl:2"):
        list(read_jsonl(path))


def test_repair_of_a_file_with_no_newline_at_all(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": ')
    assert repair_jsonl(path) == 7
    assert path.read_bytes() == b""


def test_killed_writer_leaves_a_readable_file(tmp_path: Path) -> None:
    """kill -9 in the middle of a stream of appends never leaves an unreadable file."""
    path = tmp_path / "samples.jsonl"
    code = (
        "import sys; from pathlib import Path; from promptdistill.core.io import JsonlWriter\n"
        "w = JsonlWriter(Path(sys.argv[1]), fsync_every=10**9)\n"
        "i = 0\n"
        "while True:\n"
        "    w.write({'id': i, 'pad': 'x' * 5000}); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    try:
        while not path.exists() or path.stat().st_size < 2_000_000:
            pass
    finally:
        proc.kill()
        proc.wait()
    ids = [r["id"] for r in read_jsonl(path)]
    assert ids == list(range(len(ids))) and len(ids) > 100


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":2}'
    assert os.listdir(tmp_path) == ["report.json"]


def test_run_config_merges_stages(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    run.save_stage_config("sample", {"persona": "beethoven", "n": 10})
    run.save_stage_config("train", {"lr": 0.001})
    assert run.stage_config("sample") == {"persona": "beethoven", "n": 10}
    assert run.stage_config("train") == {"lr": 0.001}
    assert run.stage_config("eval") is None


def test_missing_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        RunDir(tmp_path / "nope").require()


def test_redaction() -> None:
    url = "https://user:sk-secret@api.example.com:8443/v1?api_key=sk-secret&x=1"
    clean = redact_url(url)
    assert "sk-secret" not in clean and "user" not in clean
    assert clean == "https://api.example.com:8443/v1?api_key=REDACTED&x=1"
    assert redact("bad key sk-abcdef in message", ["sk-abcdef", None]) == "bad key *** in message"


def test_run_dir_names_every_file_and_knows_the_trained_student(tmp_path: Path) -> None:
    """Stage files come from one place; the student is the train stage's, else the adapter's."""
    from promptdistill.core.rundir import STAGE_FILES

    run = RunDir(tmp_path / "run").create()
    named = {p.name for p in (run.samples, run.failures, run.datums, run.checkpoints,
                              run.adapter, run.metrics, run.loss_png, run.report_json,
                              run.report_md, run.report_answers)}  # fmt: skip
    named |= {run.report_plot(k).name for k in ("loss", "metrics", "judge")}
    assert named == {name for files in STAGE_FILES.values() for name in files}
    with pytest.raises(UserError, match="promptdistill train"):
        run.require_adapter()
    run.adapter.mkdir()
    (run.adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/m/base"}')
    assert run.trained_student().model == "/m/base"
    run.save_stage_config("train", {"student": {"model": "other", "dtype": "fp32"}})
    assert run.trained_student().model == "other"
