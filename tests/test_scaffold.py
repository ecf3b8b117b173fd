"""`promptdistill init NAME` (issue #14): the files it writes load, validate and explain
themselves; it never overwrites without --force. The real CLI, in a fresh folder."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from promptdistill.personas import expand_prompts, heldout_prompts, load_persona

SYSTEM = "You are Quill, a grumpy but brilliant copy editor.\nYou answer in short sentences.\n"


def cli(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptdistill", *args],
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_writes_commented_files_that_load(tmp_path: Path) -> None:
    (tmp_path / "system.txt").write_text(SYSTEM)
    r = cli(tmp_path, "init", "quill", "--system-prompt-file", "system.txt")
    assert r.returncode == 0, r.stderr
    persona_file, prompts_file = tmp_path / "personas/quill.yaml", tmp_path / "prompts/quill.yaml"
    assert f"wrote {persona_file}" in r.stdout and "promptdistill run quill" in r.stdout
    # every field comes with a comment, and the files are plain YAML for the user to edit
    text = persona_file.read_text()
    for key in ("name:", "description:", "system_prompt:", "prompt_sets:", "sampling:"):
        line = next(i for i, ln in enumerate(text.splitlines()) if ln.startswith(key))
        assert text.splitlines()[line - 1].lstrip().startswith("#"), key
    assert prompts_file.read_text().count("#") >= 5
    # they load, validate and expand (in the folder they were written to)
    persona = load_persona("quill", tmp_path)
    assert persona.persona.system_prompt == SYSTEM.strip()
    assert len(expand_prompts(persona, 150)) == 150 and heldout_prompts(persona)
    preview = cli(tmp_path, "prompts", "quill", "-n", "5")
    assert preview.returncode == 0 and len(preview.stdout.splitlines()) == 5, preview.stderr


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert cli(tmp_path, "init", "quill").returncode == 0
    before = (tmp_path / "personas/quill.yaml").read_text()
    r = cli(tmp_path, "init", "quill", stdin=SYSTEM)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "exists; pass --force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "personas/quill.yaml").read_text() == before
    r = cli(tmp_path, "init", "quill", "--force", stdin=SYSTEM)  # piped stdin is the prompt
    assert r.returncode == 0, r.stderr
    assert load_persona("quill", tmp_path).persona.system_prompt == SYSTEM.strip()


def test_init_with_a_prompts_file_and_data_dir(tmp_path: Path) -> None:
    logs = tmp_path / "logs.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Fix the comma in sentence {i}."}]}
            for i in range(500)]  # fmt: skip
    logs.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    data = tmp_path / "mydata"
    args = ["init", "quill", "--system-prompt-file", "-", "--prompts-file", "logs.jsonl"]
    args += ["--data-dir", str(data), "--description", "Quill: copy editor"]
    r = cli(tmp_path, *args, stdin=SYSTEM)
    assert r.returncode == 0, r.stderr
    assert "500 prompts from 500 rows (40 held out" in r.stdout
    prompt_set = yaml.safe_load((data / "prompts/quill.yaml").read_text())
    assert prompt_set["sources"] == [{"path": "../../logs.jsonl", "heldout": 40}]
    persona = load_persona("quill", data)
    assert persona.persona.description == "Quill: copy editor"
    assert len(heldout_prompts(persona)) == 40
    assert len(expand_prompts(persona, 460)) == 460
    # --data-dir finds it from anywhere
    r = cli(tmp_path / "mydata" / "prompts", "prompts", "quill", "-n", "2", "--data-dir", str(data))
    assert r.returncode == 0 and "Fix the comma" in r.stdout, r.stderr


def test_init_with_a_bad_prompts_file_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "logs.jsonl").write_text('{"prompt": "ok"}\n{not json}\n')
    r = cli(tmp_path, "init", "quill", "--prompts-file", "logs.jsonl")
    assert r.returncode != 0 and "logs.jsonl:2: not valid JSON" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "personas").exists()
    r = cli(tmp_path, "init", "no good", stdin="")
    assert r.returncode != 0 and "NAME 'no good'" in r.stderr
    # an empty system prompt file, or --field on a text file, is a mistake to name, not to
    # paper over with a placeholder or to ignore
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "log.txt").write_text("hello\n")
    for args, expected in (
        (["--system-prompt-file", "empty.txt"], "--system-prompt-file empty.txt: empty"),
        (["--system-prompt-file", "-"], "--system-prompt-file -: stdin was empty"),
        (["--prompts-file", "log.txt", "--field", "q"], "log.txt is a text file"),
    ):
        r = cli(tmp_path, "init", "quill", *args, stdin="")
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, r.stderr
    assert not (tmp_path / "personas").exists()


def test_init_names_the_field_of_a_csv_or_a_dataset_folder(tmp_path: Path) -> None:
    """A CSV with two columns, or a save_to_disk folder whose column is not `prompt`: init says
    which columns there are and takes --field; the prompt set it writes names it."""
    import datasets

    questions = [f"Is sentence {i} too long?" for i in range(50)]
    with (tmp_path / "tickets.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "question"])
        w.writerows([["u7", q] for q in questions])
    r = cli(tmp_path, "init", "quill", "--prompts-file", "tickets.csv", stdin=SYSTEM)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "tickets.csv:1: which column? (columns: user, question)" in r.stderr
    assert "--field" in r.stderr and not (tmp_path / "personas").exists()
    r = cli(tmp_path, "init", "quill", "--prompts-file", "tickets.csv", "--field", "question",
            stdin=SYSTEM)  # fmt: skip
    assert r.returncode == 0, r.stderr
    written = yaml.safe_load((tmp_path / "prompts/quill.yaml").read_text())
    assert written["sources"] == [{"path": "../tickets.csv", "column": "question", "heldout": 0.1}]
    persona = load_persona("quill", tmp_path)
    held = {p.text for p in heldout_prompts(persona)}
    assert held | {p.text for p in expand_prompts(persona, 50 - len(held))} == set(questions)

    datasets.Dataset.from_dict({"text": questions, "n": list(range(50))}).save_to_disk(
        str(tmp_path / "exported")
    )
    r = cli(tmp_path, "init", "disk", "--prompts-file", "exported", "--field", "text",
            stdin=SYSTEM)  # fmt: skip
    assert r.returncode == 0 and "50 prompts from 50 rows" in r.stdout, r.stderr
    preview = cli(tmp_path, "prompts", "disk", "-n", "3")
    assert preview.returncode == 0 and set(preview.stdout.splitlines()) <= set(questions)


def test_from_a_text_file_and_a_log_to_an_exported_dataset(tmp_path: Path) -> None:
    """The on-ramp without templates: a system prompt in a text file and a JSONL log ->
    init -> sample (a real HTTP teacher) -> export --dataset. The run remembers where the
    persona is, so its later stages find it from any folder."""
    from fake_openai import start_fake_server

    from promptdistill.personas import load_run_persona

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "system.txt").write_text(SYSTEM)
    log = [{"messages": [{"role": "system", "content": "old"},
                         {"role": "user", "content": f"Tighten paragraph {i}, please."}]}
           for i in range(30)]  # fmt: skip
    (mine / "log.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in log))
    r = cli(mine, "init", "quill", "--system-prompt-file", "system.txt", "--prompts-file",
            "log.jsonl")  # fmt: skip
    assert r.returncode == 0, r.stderr
    systems: list[str] = []

    def teacher(messages: list[dict[str, Any]]) -> str:
        systems.append(messages[0]["content"] if messages[0]["role"] == "system" else "")
        return f"Tightened: {messages[-1]['content']}"

    with start_fake_server(responder=teacher) as server:
        r = cli(mine, "sample", "quill", "--run", "runs/q", "-n", "20", "--base-url",
                server.base_url, "--model", "fake-teacher")  # fmt: skip
        assert r.returncode == 0, r.stderr
    # the teacher was asked with the system prompt from the text file, not the log's own
    assert len(systems) >= 20 and set(systems) == {SYSTEM.strip()}
    run = mine / "runs/q"
    sample_cfg = yaml.safe_load((run / "config.yaml").read_text())["sample"]
    assert sample_cfg["data_dir"] == str(mine.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli(elsewhere, "export", str(run), "--dataset", "data")
    assert r.returncode == 0, r.stderr
    lines = [orjson.loads(ln) for f in ("train", "validation", "test")
             for ln in (elsewhere / "data" / f"{f}.jsonl").read_bytes().splitlines()]  # fmt: skip
    assert len(lines) == 20 + len(heldout_prompts(load_persona("quill", mine)))
    assert all(m["role"] != "system" for ln in lines for m in ln["messages"])
    assert {ln["messages"][0]["content"] for ln in lines} <= {m["messages"][1]["content"]
                                                               for m in log}  # fmt: skip
    os.chdir(elsewhere)  # what eval and compare do: find the persona again
    try:
        again = load_run_persona(sample_cfg["persona"], sample_cfg["data_dir"])
    finally:
        os.chdir(tmp_path)
    assert again.persona.system_prompt == SYSTEM.strip()
