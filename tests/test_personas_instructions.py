"""`teacher_instructions` on a persona and on a prompt set (issue #17): the teacher is sent
them, after the system prompt; the student's datums never contain them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fake_batches import FakeBatches
from fake_openai import start_fake_server
from fixtures_openai import cli_args, run_cli
from tiny import make_tiny_smollm_model

PERSONA_NOTE = "Think step by step before you answer."
SET_NOTE = "Then write Final Answer: N on the last line."
SYSTEM = "You are Ada, a patient math tutor."


def write_persona(root: Path) -> Path:
    (root / "personas").mkdir(parents=True)
    (root / "prompts").mkdir()
    prompt_set = {
        "name": "adds",
        "teacher_instructions": SET_NOTE,
        "categories": {
            "add": {
                "templates": [{"text": "What is {p}?", "gold": "{p.answer}"}],
                "slots": {"p": [{"text": f"{a} + 1", "answer": str(a + 1)} for a in range(8)]},
            }
        },
    }
    persona = {
        "name": "ada",
        "description": "a tutor",
        "system_prompt": SYSTEM,
        "teacher_instructions": PERSONA_NOTE,
        "prompt_sets": ["adds"],
        "sampling": {"max_tokens": 64},
    }
    (root / "prompts" / "adds.yaml").write_text(yaml.safe_dump(prompt_set))
    (root / "personas" / "ada.yaml").write_text(yaml.safe_dump(persona))
    return root / "personas" / "ada.yaml"


@pytest.mark.slow
def test_teacher_instructions_reach_the_teacher_and_never_the_student(tmp_path: Path) -> None:
    seen: list[str] = []

    def respond(messages: list[dict[str, Any]]) -> str:
        seen.append("\n".join(m["content"] for m in messages if m["role"] == "system"))
        n = int(messages[-1]["content"].split()[2]) + 1
        return f"Step 1: add one.\nFinal Answer: {n}"

    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server(responder=respond) as server:
        out = run_cli(cli_args(persona, run, 8, server.base_url, "--keep", "correct"))
    assert out.returncode == 0, out.stderr
    # the teacher got the system prompt, then the persona's, then the prompt set's instructions
    assert seen and all(s == f"{SYSTEM}\n\n{PERSONA_NOTE}\n\n{SET_NOTE}" for s in seen)
    # stored once (RUN/system-prompts/), named by each record, read back whole
    from promptdistill.core.samples import SampleReader

    records = list(SampleReader(run / "samples.jsonl").records())
    assert len(records) == 8 and all(r["messages"][0]["content"] == seen[0] for r in records)
    assert all(r["correct"] for r in records)  # graded by the eval's Final Answer pattern

    # the student's datums: the reasoning and the final answer, no system prompt, no instruction
    from promptdistill.core.config import DatumConfig
    from promptdistill.core.rundir import RunDir
    from promptdistill.datums.store import prepare_datums
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_tokenizer

    model = make_tiny_smollm_model(tmp_path / "student")
    renderer = Renderer(load_tokenizer(model))
    data, _ = prepare_datums(RunDir(run), renderer, DatumConfig(val_fraction=0.0), str(model))
    assert len(data) == 8
    for i in range(len(data)):
        text = renderer.decode(data.example(i)[0].tolist())
        assert "Step 1: add one." in text and "Final Answer:" in text
        for secret in (SYSTEM, PERSONA_NOTE, SET_NOTE, "Think step by step"):
            assert secret not in text

    # an edited instruction is a different teacher: the run refuses to mix its samples
    text = persona.read_text().replace(PERSONA_NOTE, "Answer at once.")
    persona.write_text(text)
    with start_fake_server(responder=respond) as server:
        out = run_cli(cli_args(persona, run, 8, server.base_url))
    assert out.returncode == 2 and "teacher instructions" in out.stderr


def test_a_batch_file_asks_what_online_sampling_asks(tmp_path: Path) -> None:
    """--write-batch-file carries the teacher instructions as an online request does (the
    batch paths build their jobs apart from online sampling), and --read-batch-file keeps the
    system prompt the teacher was sent."""
    import sys

    from promptdistill.core.samples import SampleReader

    persona = write_persona(tmp_path)
    run, batch = tmp_path / "run", tmp_path / "batch.jsonl"
    offline = [sys.executable, "-m", "promptdistill", "sample", str(persona), "--run", str(run),
               "-n", "8", "--model", "fake-teacher"]  # fmt: skip
    wrote = run_cli([*offline, "--write-batch-file", str(batch)])
    assert wrote.returncode == 0, wrote.stderr
    lines = [orjson.loads(x) for x in batch.read_bytes().splitlines() if x.strip()]
    want = f"{SYSTEM}\n\n{PERSONA_NOTE}\n\n{SET_NOTE}"
    assert len(lines) == 8 and all(x["body"]["messages"][0]["content"] == want for x in lines)
    with start_fake_server(batches=FakeBatches()) as server:
        results = tmp_path / "results.jsonl"
        results.write_bytes(server.batches.run_batch(batch.read_bytes()))
    read = run_cli([*offline, "--read-batch-file", str(results)])
    assert read.returncode == 0, read.stdout + read.stderr
    records = list(SampleReader(run / "samples.jsonl").records())
    assert len(records) == 8 and all(r["messages"][0]["content"] == want for r in records)
