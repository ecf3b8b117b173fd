"""`promptdistill export RUN --dataset OUT` (issue #14): the distilled training set, system
prompt stripped and splits kept, as OpenAI chat JSONL, a save_to_disk dataset and Parquet;
read back with a real `datasets`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from tiny import SYSTEM_PROMPT, write_samples

from promptdistill.datums.build import split_of
from promptdistill.datums.dataset import openai_errors


def make_run(tmp_path: Path, val_fraction: float = 0.25) -> tuple[Path, list[dict[str, Any]]]:
    run = tmp_path / "run"
    records = write_samples(run / "samples.jsonl", 40, heldout=5)
    # what train leaves out is left out here too: a repeated id, an empty answer, a loop
    bad = [dict(records[0])]
    empty = dict(records[1], id="empty")
    empty["messages"] = [*records[1]["messages"][:2], {"role": "assistant", "content": " "}]
    loop = dict(records[2], id="loop")
    loop["messages"] = [*records[2]["messages"][:2],
                        {"role": "assistant", "content": "la la la la " * 4}]  # fmt: skip
    with (run / "samples.jsonl").open("ab") as f:
        for r in (*bad, empty, loop):
            f.write(orjson.dumps(r) + b"\n")
    config = {"sample": {"persona": "beethoven", "n": 40},
              "train": {"datums": {"val_fraction": val_fraction}}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run, records


def export(run: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "promptdistill", "export", str(run), "--dataset", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def expected_splits(records: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"train": set(), "validation": set(), "test": set()}
    for r in records:
        if r["split"] == "heldout":
            out["test"].add(r["id"])
        else:
            out["validation" if split_of(r["id"], 0.25) == "val" else "train"].add(r["id"])
    return out


def test_openai_jsonl_follows_the_fine_tuning_format(tmp_path: Path) -> None:
    run, records = make_run(tmp_path)
    out = tmp_path / "openai"
    r = export(run, out)
    assert r.returncode == 0, r.stderr
    assert "system prompt stripped" in r.stdout and "duplicates 1, empty 1, loops 1" in r.stdout
    want = expected_splits(records)
    by_prompt = {r["messages"][1]["content"] + r["messages"][2]["content"]: r for r in records}
    for split, ids in want.items():
        lines = (out / f"{split}.jsonl").read_bytes().splitlines()
        assert len(lines) == len(ids)
        found = set()
        for line in lines:
            example = orjson.loads(line)
            # the format's rules, checked here directly: a messages list of role/content pairs,
            # known roles, non-empty string content, an assistant message, nothing else
            assert set(example) == {"messages"}
            assert all(set(m) == {"role", "content"} for m in example["messages"])
            assert all(m["role"] in ("user", "assistant") for m in example["messages"])
            assert all(isinstance(m["content"], str) and m["content"] for m in example["messages"])
            assert example["messages"][-1]["role"] == "assistant"
            assert openai_errors(example) == []
            assert SYSTEM_PROMPT not in line.decode()  # the system prompt is stripped
            m = example["messages"]
            found.add(by_prompt[m[0]["content"] + m[1]["content"]]["id"])
        assert found == ids, split  # the run's own splits


def test_hf_dataset_and_parquet_load_with_datasets(tmp_path: Path) -> None:
    import datasets

    run, records = make_run(tmp_path)
    want = expected_splits(records)
    assert export(run, tmp_path / "hf", "--format", "hf").returncode == 0
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(loaded) == {"train", "validation", "test"}
    for split, ids in want.items():
        assert set(loaded[split]["id"]) == ids
    row = loaded["train"][0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["turns"] == 1 and row["prompt_set"] == "beethoven"

    r = export(run, tmp_path / "pq", "--format", "parquet")
    assert r.returncode == 0, r.stderr
    for split, ids in want.items():
        part = datasets.Dataset.from_parquet(
            str(tmp_path / "pq" / f"{split}.parquet"), cache_dir=str(tmp_path / "cache")
        )
        assert set(part["id"]) == ids
        assert part[0]["messages"][0]["role"] == "user" and part[0]["messages"][-1]["content"]


def test_bad_requests_are_one_line_errors(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    cases = [
        (export(run, tmp_path / "taken"), "is not an empty folder"),
        (export(run, tmp_path / "new", "--format", "csv"), "--format 'csv'"),
        (export(tmp_path / "nope", tmp_path / "new"), "does not exist"),
    ]
    cmd = [sys.executable, "-m", "promptdistill", "export", str(run)]
    cases.append((subprocess.run(cmd, capture_output=True, text=True), "pass one of --merged"))
    for result, message in cases:
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("target", ["a file", "under a file", "read-only", "disk full"])
def test_an_unwritable_target_is_one_line_naming_it(tmp_path: Path, target: str) -> None:
    """As for `--merged` (issue #16): the target is checked before the work, a disk that fills
    while writing names the target (not a temp folder), and nothing half-written is left."""
    import contextlib
    import os

    from fixtures_openai import one_line_error
    from fs_faults import file_size_limit, unwritable_target

    run, _ = make_run(tmp_path)
    limit, kept = None, None
    with contextlib.ExitStack() as stack:
        if target == "disk full":
            out, limit = tmp_path / "full" / "set", file_size_limit(1000)
            said = "larger than this system allows"
        else:
            out, said, kept = unwritable_target(target, tmp_path, stack)
        cmd = [sys.executable, "-m", "promptdistill", "export", str(run), "--dataset", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit,
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # fmt: skip
        line = one_line_error(r, 2)
        assert str(out) in line and said in line and ".tmp-" not in line, line
    assert kept is None or kept.read_bytes() == b"keep me"
    if target == "disk full":
        assert list(out.parent.iterdir()) == []  # neither the target nor its temp folder


@pytest.mark.parametrize(
    ("example", "problem"),
    [
        ({"messages": []}, "no 'messages' list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "role 'bot'"),
        ({"messages": [{"role": "assistant", "content": ""}]}, "non-empty string"),
        ({"messages": [{"role": "assistant", "content": "a", "extra": 1}]}, "unknown keys"),
        ({"messages": [{"role": "user", "content": "a", "weight": 1}]}, "'weight' is 0 or 1"),
        ({"prompt": "x", "messages": [{"role": "assistant", "content": "a"}]}, "unknown keys"),
    ],
)
def test_openai_rules(example: dict[str, Any], problem: str) -> None:
    assert any(problem in e for e in openai_errors(example))
