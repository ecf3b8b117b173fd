"""Datums: system prompt removed, loss mask on real chat templates, prefix check, truncation,
deterministic split, caching by fingerprint."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny import (
    CHATML_TEMPLATE,
    SYSTEM_PROMPT,
    make_tiny_tokenizer,
    sample_record,
    write_samples,
)

from promptdistill.core.config import DatumConfig
from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.datums.build import build_datums, conversation_to_datum, split_of
from promptdistill.datums.store import load_datums, prepare_datums
from promptdistill.models.chat import Renderer

ANSWER = "Ah, you ask me that as if the answer were simple!"
CONVO = [
    {"role": "system", "content": SYSTEM_PROMPT},
    {"role": "user", "content": "What do you think of Mozart?"},
    {"role": "assistant", "content": ANSWER},
]


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def weighted_text(tok: Any, tokens: list[int], weights: list[float]) -> str:
    return str(tok.decode([t for t, w in zip(tokens, weights, strict=True) if w > 0]))


def test_mask_on_smollm2_template_keeps_default_system_prompt(smol_tok: Any) -> None:
    d = conversation_to_datum(CONVO, Renderer(smol_tok), record_id="r1")
    text = smol_tok.decode(d.tokens)
    # the teacher's persona prompt is gone; SmolLM2's template injects its default instead
    assert "Beethoven" not in text
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    # loss exactly on the answer and its end-of-turn token; not on the newline after it
    assert weighted_text(smol_tok, d.tokens, d.weights) == ANSWER + "<|im_end|>"
    assert d.weights[-1] == 0.0 and smol_tok.decode(d.tokens[-1:]) == "\n"
    # what the student is trained on is what inference renders: the prompt is a token prefix
    first = d.weights.index(1.0)
    inference = smol_tok.apply_chat_template(CONVO[1:2], add_generation_prompt=True)
    inference_ids = inference["input_ids"] if hasattr(inference, "keys") else inference
    assert d.tokens[:first] == list(inference_ids)
    assert not any(d.weights[:first])


def test_mask_on_tiny_chatml_template(tiny_tok: Any) -> None:
    d = conversation_to_datum(CONVO, Renderer(tiny_tok))
    text = tiny_tok.decode(d.tokens)
    assert "beethoven" not in text.lower() and "system" not in text  # no default system prompt
    assert weighted_text(tiny_tok, d.tokens, d.weights).split() == [
        *ANSWER.lower().split(),
        "<|im_end|>",
    ]
    assert len(d.tokens) == len(d.weights)


def test_all_assistant_turns_weighted(smol_tok: Any) -> None:
    convo = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Good day."},
        {"role": "system", "content": "Be Beethoven."},  # every system message goes
        {"role": "user", "content": "And Mozart?"},
        {"role": "assistant", "content": "A miracle."},
    ]
    d = conversation_to_datum(convo, Renderer(smol_tok))
    assert weighted_text(smol_tok, d.tokens, d.weights) == (
        "Good day.<|im_end|>A miracle.<|im_end|>"
    )
    assert "Be Beethoven" not in smol_tok.decode(d.tokens)


def test_truncated_teacher_answer_does_not_teach_stopping(smol_tok: Any) -> None:
    d = conversation_to_datum(CONVO, Renderer(smol_tok), teacher_truncated=True)
    assert weighted_text(smol_tok, d.tokens, d.weights) == ANSWER


def test_prefix_unstable_template_is_refused(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    # the generation prompt says "assistant:" but rendered turns say "assistant\n"
    unstable = CHATML_TEMPLATE.replace(
        "{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>' + 'assistant:' + '\n' }}"
    )
    tok = AutoTokenizer.from_pretrained(make_tiny_tokenizer(tmp_path / "tok", unstable))
    with pytest.raises(UserError, match="my-student is not prefix-stable"):
        conversation_to_datum(CONVO, Renderer(tok), record_id="x", model_name="my-student")


def test_overlong_truncate_and_drop(tiny_tok: Any) -> None:
    rng = random.Random(0)
    records = [sample_record(i, rng, words=(1, 1)) for i in range(20)]
    records += [sample_record(100 + i, rng, words=(8, 8)) for i in range(5)]
    full, _ = build_datums(records, Renderer(tiny_tok), DatumConfig(max_len=4096), "tiny")
    limit = max(len(d.tokens) for d in full[:20]) + 1  # every short one fits, no long one does
    datums, stats = build_datums(records, Renderer(tiny_tok), DatumConfig(max_len=limit), "tiny")
    assert stats["truncated"] == 5 and stats["dropped"] == 0 and len(datums) == 25
    cut = [d for d in datums if d.truncated]
    assert len(cut) == 5 and all(len(d.tokens) == limit for d in cut)
    assert all(d.tokens == f.tokens[:limit] for d, f in zip(datums, full, strict=True))

    datums, stats = build_datums(
        records, Renderer(tiny_tok), DatumConfig(max_len=limit, overlong="drop"), "tiny"
    )
    assert stats["dropped"] == 5 and stats["truncated"] == 0 and len(datums) == 20


def test_split_is_deterministic_and_stable_as_samples_grow(tmp_path: Path, tiny_tok: Any) -> None:
    ids = [f"beethoven:{i:06x}" for i in range(4000)]
    share = np.mean([split_of(i, 0.1) == "val" for i in ids])
    assert 0.08 < share < 0.12
    assert [split_of(i, 0.1) for i in ids] == [split_of(i, 0.1) for i in ids]

    run = RunDir(tmp_path / "run").create()
    write_samples(run.samples, 120, heldout=4)
    first, rebuilt = prepare_datums(run, Renderer(tiny_tok), DatumConfig(), "tiny")
    assert rebuilt
    before = dict(zip(first.ids, first.split.tolist(), strict=True))
    write_samples(run.samples, 80, start=120)  # the sampler appended more answers
    second, rebuilt = prepare_datums(run, Renderer(tiny_tok), DatumConfig(), "tiny")
    assert rebuilt and len(second) == 200
    after = dict(zip(second.ids, second.split.tolist(), strict=True))
    assert all(after[i] == s for i, s in before.items())
    assert not any(i.startswith("beethoven/heldout") for i in second.ids)  # never trained on


def test_saved_with_stats_and_rebuilt_only_on_change(tmp_path: Path, tiny_tok: Any) -> None:
    run = RunDir(tmp_path / "run").create()
    write_samples(run.samples, 60, heldout=3)
    data, rebuilt = prepare_datums(run, Renderer(tiny_tok), DatumConfig(), "tiny")
    out = run.file("datums")
    assert {p.name for p in out.iterdir()} == {
        "datums.safetensors",
        "index.json",
        "stats.json",
        "fingerprint.json",
    }
    stats = data.stats
    assert stats["examples"] == 60 and stats["heldout_skipped"] == 3
    assert stats["train"]["examples"] + stats["val"]["examples"] == 60
    assert stats["loss_tokens"] == int(data.weights.sum()) < stats["tokens"] == len(data.tokens)
    assert stats["system_tokens_removed_mean"] > 20  # the persona prompt's tokens
    again = load_datums(out)
    assert again.ids == data.ids and np.array_equal(again.tokens, data.tokens)

    mtime = (out / "datums.safetensors").stat().st_mtime_ns
    _, rebuilt = prepare_datums(run, Renderer(tiny_tok), DatumConfig(), "tiny")
    assert not rebuilt and (out / "datums.safetensors").stat().st_mtime_ns == mtime
    _, rebuilt = prepare_datums(run, Renderer(tiny_tok), DatumConfig(val_fraction=0.2), "tiny")
    assert rebuilt


def test_missing_or_empty_samples_are_user_errors(tmp_path: Path, tiny_tok: Any) -> None:
    run = RunDir(tmp_path / "run").create()
    with pytest.raises(UserError, match="samples.jsonl does not exist"):
        prepare_datums(run, Renderer(tiny_tok), DatumConfig(), "tiny")
    write_samples(run.samples, 0, heldout=5)
    with pytest.raises(UserError, match="no usable training samples"):
        prepare_datums(run, Renderer(tiny_tok), DatumConfig(), "tiny")
    shutil.rmtree(run.path)


def test_looping_and_empty_teacher_answers_are_left_out_and_counted(tiny_tok: Any) -> None:
    """The same word 4-gram three times is a loop (issue #13): not trained on, unless asked."""
    from promptdistill.core.text import loops

    assert loops("1. 1. 1. 1. 1. 1.") and loops("I am so glad. I am so glad. I am so glad.")
    assert not loops("Ah, you ask me that as if the answer were simple!")
    looping = {**records_like(CONVO, "loop"), "messages": [
        CONVO[0], CONVO[1], {"role": "assistant", "content": "la la la la " * 4}]}  # fmt: skip
    empty = {**records_like(CONVO, "empty"), "messages": [
        CONVO[0], CONVO[1], {"role": "assistant", "content": "   "}]}  # fmt: skip
    plain = records_like(CONVO, "plain")
    datums, stats = build_datums([looping, empty, plain], Renderer(tiny_tok), DatumConfig(), "t")
    assert [d.id for d in datums] == ["plain"] and stats["loops"] == 1 and stats["empty"] == 1
    kept, stats = build_datums(
        [looping, empty, plain], Renderer(tiny_tok), DatumConfig(keep_loops=True), "t"
    )
    assert sorted(d.id for d in kept) == ["loop", "plain"] and stats["loops"] == 0


def records_like(convo: list[dict[str, str]], rid: str) -> dict[str, Any]:
    return {"id": rid, "split": "train", "messages": list(convo)}
