"""samples.jsonl with the system prompt stored once per run (issue #16), and old runs that carry
it in every record: every reader gets the same messages from both."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fake_openai import start_fake_server
from fixtures_openai import cli_args, one_line_error, raw_samples, run_cli, samples, write_persona
from tiny import SYSTEM_PROMPT, make_tiny_tokenizer, write_samples

from promptdistill.core.config import DatumConfig
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader, compact, store_system_prompt
from promptdistill.datums.store import prepare_datums
from promptdistill.evaluation.inputs import Item
from promptdistill.models.chat import Renderer


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    from transformers import AutoTokenizer

    return Renderer(
        AutoTokenizer.from_pretrained(make_tiny_tokenizer(tmp_path_factory.mktemp("t")))
    )


def _old_and_new(tmp_path: Path, n: int = 30) -> tuple[RunDir, RunDir, list[dict[str, Any]]]:
    """The same records twice: inline (as runs before #16 wrote them) and stored once."""
    old = RunDir(tmp_path / "old").create()
    records = write_samples(old.samples, n, heldout=3)
    new = RunDir(tmp_path / "new").create()
    key = store_system_prompt(new.samples, SYSTEM_PROMPT)
    new.samples.write_bytes(b"".join(orjson.dumps(compact(r, key)) + b"\n" for r in records))
    return old, new, records


def test_old_and_new_records_read_the_same_everywhere(tmp_path: Path, renderer: Renderer) -> None:
    old, new, records = _old_and_new(tmp_path)
    assert new.samples.stat().st_size < old.samples.stat().st_size - 30 * len(SYSTEM_PROMPT)
    assert SYSTEM_PROMPT.encode() not in new.samples.read_bytes()
    # the records as every stage reads them
    read_old, read_new = (
        list(SampleReader(old.samples).records()),
        list(SampleReader(new.samples).records()),
    )
    assert read_old == read_new == records
    # datums: the same arrays, token for token
    a, _ = prepare_datums(old, renderer, DatumConfig(), "tiny")
    b, _ = prepare_datums(new, renderer, DatumConfig(), "tiny")
    assert a.ids == b.ids and np.array_equal(a.tokens, b.tokens)
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.offsets, b.offsets)
    assert a.stats["system_tokens_removed_mean"] == b.stats["system_tokens_removed_mean"] > 0
    # eval's held-out items, with the system prompt the teacher answered with
    items_old = [Item.from_sample(r, "heldout") for r in read_old]
    items_new = [Item.from_sample(r, "heldout") for r in read_new]
    assert items_old == items_new and all(i and i.system == SYSTEM_PROMPT for i in items_new)
    # kd/onpolicy's teacher prompt, and the on-policy scorer's conversations
    from promptdistill.core.config import TeacherConfig
    from promptdistill.training.distill import system_prompt_of
    from promptdistill.training.scorer import EndpointScorer

    assert system_prompt_of(old) == system_prompt_of(new) == SYSTEM_PROMPT
    teacher = TeacherConfig(base_url="http://127.0.0.1:9/v1", api_key_env="OPENAI_API_KEY")
    s_old, s_new = (EndpointScorer(teacher, renderer, r.samples) for r in (old, new))
    try:
        assert s_old.prompts == s_new.prompts and len(s_new.prompts) == 33
        assert all(p[0]["content"] == SYSTEM_PROMPT for p in s_new.prompts.values())
    finally:
        s_old.close(), s_new.close()


def test_the_stream_reader_sees_the_same_examples(tmp_path: Path, renderer: Renderer) -> None:
    import threading

    from promptdistill.core.config import TrainConfig
    from promptdistill.training.sources import Batching
    from promptdistill.training.stream import SampleStream

    old, new, records = _old_and_new(tmp_path)
    seen = []
    for run in (old, new):
        stream = SampleStream(run, DatumConfig(), "tiny", renderer, TrainConfig(batch_tokens=256),
                              [str(r["id"]) for r in records], threading.Event())  # fmt: skip
        stream.open()
        stream.with_batching(Batching(budget=256, mode="pad"))
        stream.start(None)
        batches = []
        while (b := stream.next()) is not None:
            batches.append((b.ids, b.examples[0][0].tolist()))
        stream.close()
        seen.append(batches)
    assert seen[0] == seen[1] and seen[0]


def test_an_old_run_grows_with_stored_prompt_records(tmp_path: Path) -> None:
    """A run sampled before #16 (the prompt in every record) resumes: the new records name the
    stored prompt, the old ones stay as they are, and all read back alike."""
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server() as server:
        assert run_cli(cli_args(persona, run, 4, server.base_url, "--no-heldout")).returncode == 0
        inline = [orjson.dumps(r) + b"\n" for r in samples(run)]  # as an old run has them
        (run / "samples.jsonl").write_bytes(b"".join(inline))
        shutil.rmtree(run / "system-prompts")
        grown = run_cli(cli_args(persona, run, 8, server.base_url, "--no-heldout"))
        assert server.requests == 8
    assert grown.returncode == 0, grown.stderr
    raw = raw_samples(run)
    assert ["system_prompt" in r for r in raw] == [False] * 4 + [True] * 4
    read = samples(run)
    assert len({r["id"] for r in read}) == 8
    assert len({r["messages"][0]["content"] for r in read}) == 1  # one system prompt, in all


def test_a_missing_stored_prompt_is_one_line_naming_it(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server() as server:
        args = cli_args(persona, run, 3, server.base_url, "--no-heldout")
        assert run_cli(args).returncode == 0
        (stored,) = (run / "system-prompts").iterdir()
        stored.unlink()
        result = run_cli(args)
    line = one_line_error(result, 2)
    assert f"{stored} is missing" in line and "samples.jsonl" in line
