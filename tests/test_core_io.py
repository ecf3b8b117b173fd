"""The run directory survives crashes: atomic writes, torn JSONL lines, redaction."""

from __future__ import annotations

import contextlib
import os
import re
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
    named = {p.name for p in (run.samples, run.failures, run.system_prompts, run.batches,
                              run.datums,
                              run.checkpoints, run.adapter, run.metrics, run.loss_png,
                              run.train_dashboard, run.report_json, run.report_md,
                              run.report_answers)}  # fmt: skip
    named |= {
        run.report_plot(k).name for k in ("loss", "metrics", "judge", "accuracy", "correctness")
    }
    assert named == {name for files in STAGE_FILES.values() for name in files}
    with pytest.raises(UserError, match="promptdistill train"):
        run.require_adapter()
    run.adapter.mkdir()
    (run.adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/m/base"}')
    assert run.trained_student().model == "/m/base"
    run.save_stage_config("train", {"student": {"model": "other", "dtype": "fp32"}})
    assert run.trained_student().model == "other"


# --------------------------------------------------------------------------- OS errors (#16)
# A full disk, a file-size limit and a read-only directory, made for real (tests/fs_faults.py):
# each gives one line naming the path and what to do, no traceback, and no torn or lost line.


def _sample_args(tmp_path: Path, run: Path, n: int, url: str) -> list[str]:
    from fixtures_openai import cli_args, write_persona

    return cli_args(write_persona(tmp_path / "data"), run, n, url, "--no-heldout")


def _intact(run: Path, at_least: int) -> set[str]:
    """Every line of samples.jsonl is whole JSON; returns the ids (each once)."""
    from fixtures_openai import samples

    records = samples(run)  # raises on a torn line
    ids = {r["id"] for r in records}
    assert len(ids) == len(records) >= at_least
    return ids


@pytest.mark.parametrize("fault", ["file-size limit", "full tmpfs"])
def test_disk_full_mid_sample_is_one_line_and_a_rerun_goes_on(tmp_path: Path, fault: str) -> None:
    from fake_openai import start_fake_server
    from fixtures_openai import cli_env, one_line_error
    from fs_faults import file_size_limit, remount, tmpfs

    with contextlib.ExitStack() as stack:
        if fault == "full tmpfs":
            run = stack.enter_context(tmpfs(tmp_path / "disk", 64 * 1024)) / "run"
            limit = None
            advice = "the disk is full"
        else:
            run, limit = tmp_path / "run", file_size_limit(40_000)
            advice = "larger than this system allows"
        server = stack.enter_context(start_fake_server(answer_words=20))
        args = _sample_args(tmp_path, run, 400, server.base_url)
        env = cli_env(PYTHONDONTWRITEBYTECODE="1")
        full = subprocess.run(
            args, capture_output=True, text=True, timeout=120, env=env, preexec_fn=limit
        )
        line = one_line_error(full, 2)
        assert "samples.jsonl" in line and advice in line and "rerun" in line, line
        kept = _intact(run, at_least=20)  # no torn last line, nothing twice
        assert len(kept) < 400 and f"[{len(kept)} answers kept in" in line, line
        if fault == "full tmpfs":
            remount(run.parent, "size=4m")
        again = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        assert again.returncode == 0, again.stderr
        before = re.search(r"answered before this run\W+(\d+)", again.stdout)
        assert before and int(before.group(1)) == len(kept), again.stdout
        assert len(_intact(run, at_least=400)) == 400
        assert all(k <= 2 for k in server.asked.values())  # those in flight when it filled


@pytest.mark.parametrize("fault", ["file-size limit", "full tmpfs"])
def test_disk_full_at_the_start_is_one_line(tmp_path: Path, fault: str) -> None:
    from fixtures_openai import cli_env, one_line_error
    from fs_faults import file_size_limit, fill, tmpfs

    with contextlib.ExitStack() as stack:
        if fault == "full tmpfs":
            disk = stack.enter_context(tmpfs(tmp_path / "disk", 64 * 1024))
            fill(disk)
            run, limit, advice = disk / "run", None, "the disk is full"
        else:
            run, limit = tmp_path / "run", file_size_limit(16)
            advice = "larger than this system allows"
        args = _sample_args(tmp_path, run, 5, "http://127.0.0.1:9/v1")
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=120, preexec_fn=limit,
            env=cli_env(PYTHONDONTWRITEBYTECODE="1"),
        )  # fmt: skip
        line = one_line_error(result, 2)
        assert str(run / "config.yaml") in line and advice in line, line


def test_a_run_on_a_read_only_file_system_is_one_line(tmp_path: Path) -> None:
    from fake_openai import start_fake_server
    from fixtures_openai import one_line_error, run_cli
    from fs_faults import read_only_dir

    with read_only_dir(tmp_path / "ro") as ro:
        result = run_cli(_sample_args(tmp_path, ro / "run", 5, "http://127.0.0.1:9/v1"))
        line = one_line_error(result, 2)
        assert f"cannot create run directory {ro / 'run'}" in line
        assert "read-only" in line or "permission denied" in line, line

    # a run that became read-only after it was sampled: its samples stay as they are
    if os.geteuid() != 0:
        pytest.skip("a run made read-only after sampling needs a remountable tmpfs (root)")
    from fs_faults import remount, tmpfs

    with tmpfs(tmp_path / "disk", 1 << 20) as disk, start_fake_server() as server:
        args = _sample_args(tmp_path, disk / "run", 5, server.base_url)
        assert run_cli(args).returncode == 0
        before = (disk / "run" / "samples.jsonl").read_bytes()
        remount(disk, "ro")
        more = args[: args.index("-n") + 1] + ["8"] + args[args.index("-n") + 2 :]
        line = one_line_error(run_cli(more), 2)
        assert str(disk / "run") in line and "read-only" in line, line
        assert (disk / "run" / "samples.jsonl").read_bytes() == before
        remount(disk, "rw")


def test_an_os_error_no_stage_converted_is_worded_by_what_failed() -> None:
    """The CLI's last boundary (cli/app.py) does not know whether the failed call read or
    wrote: a missing file must not read 'cannot write', a full disk must."""
    import errno

    from promptdistill.core.io import as_os_error, os_error

    missing = os_error(OSError(errno.ENOENT, "No such file", "/r/x.json"), action=None)
    assert (
        str(missing)
        == "cannot access /r/x.json: no such file or directory: was the folder removed?"
    )
    full = os_error(OSError(errno.ENOSPC, "No space left on device", "/r/a"), action=None)
    assert str(full).startswith("cannot write /r/a: the disk is full")
    wrapped = as_os_error(RuntimeError("I/O error: File too large (os error 27)"))
    assert wrapped is not None and str(os_error(wrapped, action=None)).startswith(
        "cannot write a file: the file is larger than this system allows"
    )
