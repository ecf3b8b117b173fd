"""Prompt sources (issue #14): prompt sets that read JSONL, CSV/TSV, text, Parquet and
save_to_disk files through the real CLI (`promptdistill prompts`), with a real `datasets`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from promptdistill.core.errors import UserError
from promptdistill.personas import (
    expand_prompts,
    heldout_prompts,
    load_persona,
    persona_names,
    prompt_id,
)


def write_set(root: Path, sources: list[dict[str, object]], **extra: object) -> None:
    """personas/logbot.yaml and prompts/logbot.yaml (sources only, no templates)."""
    (root / "personas").mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    persona = {
        "name": "logbot",
        "description": "answers the prompts of a log",
        "system_prompt": "You are Logbot.",
        "prompt_sets": ["logbot"],
    }
    (root / "personas" / "logbot.yaml").write_text(yaml.safe_dump(persona))
    prompt_set = {"name": "logbot", "sources": sources, **extra}
    (root / "prompts" / "logbot.yaml").write_text(yaml.safe_dump(prompt_set, sort_keys=False))


def prompts_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROMPTDISTILL_DATA": str(root)}
    cmd = [sys.executable, "-m", "promptdistill", "prompts", "logbot", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def jsonl(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


LOG = [f"How do I reset my password, attempt {i}?" for i in range(30)]


def test_every_file_kind_is_read_through_the_cli(tmp_path: Path) -> None:
    import datasets

    data = tmp_path / "data"
    jsonl(data / "a.jsonl", [{"prompt": p, "user": "u1"} for p in LOG[:5]])
    jsonl(
        data / "b.jsonl",
        [{"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": p},
                       {"role": "assistant", "content": "ok"}]} for p in LOG[5:10]],
    )  # fmt: skip
    jsonl(data / "c.jsonl", [{"text": p} for p in LOG[10:13]] + [LOG[13]])  # field:, bare string
    with open(data / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["when", "question"])
        w.writerows([["today", p] for p in LOG[14:17]] + [["today", "Has a, comma, inside?"]])
    (data / "e.tsv").write_text("prompt\tx\n" + "".join(f"{p}\t1\n" for p in LOG[17:20]))
    (data / "f.txt").write_text("\n".join(LOG[20:23]) + "\n\n")
    datasets.Dataset.from_dict({"prompt": LOG[23:26]}).to_parquet(str(data / "g.parquet"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"question": LOG[26:30]})}
    ).save_to_disk(str(data / "h"))
    write_set(
        tmp_path,
        [
            {"path": "../data/a.jsonl"},
            {"path": "../data/b.jsonl"},
            {"path": "../data/c.jsonl", "field": "text"},
            {"path": "../data/d.csv", "column": "question"},
            {"path": "../data/e.tsv"},
            {"path": "../data/f.txt"},
            {"path": "../data/g.parquet"},
            {"path": str(data / "h"), "field": "question"},  # absolute paths work too
        ],
    )
    r = prompts_cli(tmp_path, "-n", "31", "--ids")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    texts = [line.split("\t", 1)[1] for line in lines]
    assert sorted(texts) == sorted([*LOG, "Has a, comma, inside?"])
    # ids are a hash of the text (and the prompt set): the same on every run and in any file
    assert all(
        line.split("\t")[0] == prompt_id("logbot", t) for line, t in zip(lines, texts, strict=True)
    )
    assert prompts_cli(tmp_path, "-n", "31", "--ids").stdout == r.stdout
    # one summary line per source on stderr, stdout stays one prompt per line
    assert r.stderr.count("prompt set logbot:") == 8, r.stderr


def test_duplicates_heldout_and_prefix_stability(tmp_path: Path) -> None:
    log = [f"Question number {i} from the log?" for i in range(200)]
    rows = [{"prompt": p} for p in log] + [{"prompt": log[0]}, {"prompt": f"  {log[1]}  "}]
    rows += [{"prompt": ""}, {"prompt": None}]
    jsonl(tmp_path / "prompts" / "log.jsonl", rows)
    more = [{"prompt": log[2]}, {"prompt": "New one?"}, {"prompt": "Another?"}]
    jsonl(tmp_path / "prompts" / "more.txt.jsonl", more)
    write_set(
        tmp_path,
        [{"path": "log.jsonl", "heldout": 0.2}, {"path": "more.txt.jsonl", "heldout": 1}],
    )
    r = prompts_cli(tmp_path, "-n", "1")
    assert r.returncode == 0, r.stderr
    # exact duplicates (after stripping) are dropped and counted, across sources too
    assert "log.jsonl: 200 prompts from 204 rows" in r.stderr, r.stderr
    assert "2 exact duplicates dropped, 2 empty skipped" in r.stderr
    assert "more.txt.jsonl: 2 prompts from 3 rows (1 held out, 1 exact duplicates" in r.stderr

    persona = load_persona("logbot", tmp_path)
    held = {p.text for p in heldout_prompts(persona)}
    train = [p.text for p in expand_prompts(persona, 202 - len(held))]
    assert 20 <= len(held) - 1 <= 60  # a 0.2 fraction of 200 by hash, plus the count of 1
    assert not held & set(train), "a held-out prompt is never trained on"
    assert set(train) | held == {*log, "New one?", "Another?"}
    # the same prompts are held out on every load (a hash of the text, not a random draw)
    assert {p.text for p in heldout_prompts(load_persona("logbot", tmp_path))} == held
    # expansion is prefix-stable, and seeded
    assert [p.id for p in expand_prompts(persona, 10)] == [
        p.id for p in expand_prompts(persona, 20)[:10]
    ]
    assert [p.text for p in expand_prompts(persona, 10, seed=1)] != train[:10]
    with pytest.raises(UserError, match="yield only"):
        expand_prompts(persona, 1000)


def test_sources_and_templates_mix(tmp_path: Path) -> None:
    jsonl(tmp_path / "prompts" / "log.jsonl", [{"prompt": p} for p in LOG[:6]])
    write_set(
        tmp_path,
        [{"path": "log.jsonl", "category": "logs"}],
        categories={"asked": {"templates": ["Tell me about {x}."], "slots": {"x": ["a", "b"]}}},
    )
    persona = load_persona("logbot", tmp_path)
    prompts = expand_prompts(persona, 8)
    assert {p.category for p in prompts} == {"logs", "asked"}
    assert [p.category for p in prompts[:4]].count("logs") == 2  # round-robin over both


BAD = {
    "missing file": (
        [{"path": "nope.jsonl"}], None, "prompts/logbot.yaml:3: field 'sources.0.path': ",
    ),
    "bad json": (
        [{"path": "x.jsonl"}], b'{"prompt": "ok"}\n{"prompt": oops}\n', "x.jsonl:2: not valid JSON",
    ),
    "missing field": (
        [{"path": "x.jsonl", "field": "question"}], b'{"prompt": "ok"}\n',
        "x.jsonl:1: field 'question'",
    ),
    "no prompt field": ([{"path": "x.jsonl"}], b'{"q": "ok", "a": 1}\n', "the record has: q, a"),
    "unknown column": (
        [{"path": "x.csv", "column": "q"}], b"prompt,b\nhi,1\n",
        "x.csv:1: column 'q' is not in the header (columns: prompt, b)",
    ),
    "which column": ([{"path": "x.csv"}], b"a,b\nhi,1\n", "which column?"),
    "unknown format": ([{"path": "x.xlsx"}], b"", "cannot tell the format of x.xlsx"),
    "both path and dataset": ([{"path": "x.txt", "dataset": "a/b"}], b"hi\n", "field 'sources.0'"),
    "too many held out": ([{"path": "x.txt", "heldout": 5}], b"a\nb\n", "5 held out of 2 prompts"),
    "not utf-8": ([{"path": "x.txt"}], b"caf\xe9\n", "not UTF-8"),
    # a setting that cannot apply is refused, not ignored
    "field of a text file": (
        [{"path": "x.txt", "field": "q"}], b"hi\n",
        "field 'sources.0.field': x.txt is a text file, one prompt per line",
    ),
    "held out zero": (
        [{"path": "x.txt", "heldout": 0}], b"a\nb\n",
        "field 'sources.0.heldout': 0 is neither a fraction between 0 and 1 (0.1) nor a count",
    ),
    "held out 1.0": ([{"path": "x.txt", "heldout": 1.0}], b"a\nb\n", "1.0 is neither a fraction"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sources_are_one_line_naming_file_line_and_field(tmp_path: Path, case: str) -> None:
    sources, content, expected = BAD[case]
    if content is not None:
        (tmp_path / "prompts").mkdir(parents=True, exist_ok=True)
        (tmp_path / "prompts" / str(sources[0]["path"])).write_bytes(content)
    write_set(tmp_path, sources)
    r = prompts_cli(tmp_path, "-n", "1")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0], lines[0]


def hub_source_error(tmp_path: Path, **env: str) -> str:
    """The one-line error of a prompt set whose source is a hub dataset, read under `env`
    (no offline or proxy variables of this machine's own)."""
    write_set(tmp_path, [{"dataset": "someone/user-logs", "split": "train"}])
    base = {k: v for k, v in os.environ.items() if "OFFLINE" not in k and "PROXY" not in k.upper()}
    cmd = [sys.executable, "-m", "promptdistill", "prompts", "logbot", "-n", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**base, "PROMPTDISTILL_DATA": str(tmp_path), **env})  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot read someone/user-logs" in r.stderr
    return r.stderr


def test_hub_dataset_without_the_hub_is_a_clear_error(tmp_path: Path) -> None:
    line = hub_source_error(tmp_path, HF_HUB_OFFLINE="1")
    assert "HF_HUB_OFFLINE is set, and the dataset is not in the local cache" in line


def test_an_unreachable_hub_is_named_at_once(tmp_path: Path) -> None:
    """With no offline flag set, a hub that refuses connections is found out by one connect
    (not half a minute of the hub client's retries) and named in the one-line error."""
    line = hub_source_error(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert "the hub (http://127.0.0.1:9) did not answer, and the dataset is not in" in line


def test_search_path_puts_the_users_folders_first(tmp_path: Path) -> None:
    """--data-dir, then $PROMPTDISTILL_DATA, then the current directory, then shipped."""
    for folder, words in (("flag", "From the flag."), ("env", "From env."), ("cwd", "From cwd.")):
        root = tmp_path / folder
        (root / "data.txt").parent.mkdir(parents=True, exist_ok=True)
        write_set(root, [{"path": "../data.txt"}])
        (root / "data.txt").write_text(words + "\n")
    # a user's own beethoven hides the shipped one
    (tmp_path / "cwd" / "personas" / "beethoven.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "beethoven",
                "description": "mine",
                "system_prompt": "Me.",
                "prompt_sets": ["logbot"],
            }
        )  # fmt: skip
    )

    def first(*args: str, env: dict[str, str]) -> str:
        cmd = [sys.executable, "-m", "promptdistill", "prompts", *args, "-n", "1"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                           cwd=tmp_path / "cwd")  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    base = {k: v for k, v in os.environ.items() if k != "PROMPTDISTILL_DATA"}
    with_env = {**base, "PROMPTDISTILL_DATA": str(tmp_path / "env")}
    assert first("logbot", "--data-dir", str(tmp_path / "flag"), env=with_env) == "From the flag."
    assert first("logbot", env=with_env) == "From env."
    assert first("logbot", env=base) == "From cwd."
    assert first("beethoven", env=base) == "From cwd."  # the user's persona, not the shipped
    assert persona_names([tmp_path / "cwd"]) == ["beethoven", "logbot"]
    # and the shipped personas are found after the user's folders
    cmd = [sys.executable, "-m", "promptdistill", "prompts", "mathtutor", "-n", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=base, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
