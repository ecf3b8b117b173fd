"""Teacher conversations -> training examples ("datums"): token ids plus per-token loss weights.

This is the step that removes the system prompt (Askell et al. 2021, arXiv 2112.00861; Snell et
al. 2022, arXiv 2209.15189): the teacher answered *with* the persona prompt, the student is trained
to give the same answer *without* it. The shape follows tinker-cookbook's
`supervised/data.py: conversation_to_datum` with `TrainOnWhat.ALL_ASSISTANT_MESSAGES`.

Choices, each tested in tests/test_datums.py:
- Every system message is stripped, then user and assistant turns are rendered with the
  STUDENT's chat template. If that template injects a default system prompt when none is given
  (SmolLM2's does: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"), the
  student sees that default here at train time, and it sees it again at inference, where the
  same template renders a conversation without a system message. Train and inference therefore
  match token for token; the persona is learnt on top of the model's default prompt.
- Weight 0 on every prompt token. Weight 1 on each assistant turn's tokens up to and including
  its end-of-turn token (`<|im_end|>` for ChatML), so the student learns to stop (TRL warns when
  that token is masked). The newline the template writes *after* `<|im_end|>` is weight 0:
  generation stops at the end-of-turn token, so the student never has to produce it.
- A teacher answer cut off by max_tokens (`truncated`) is kept, but its end-of-turn token is
  weight 0: the teacher did not choose to stop there, and the student must not learn to. In a
  multi-turn conversation (`sample --turns K`, issue #14) that holds for each cut answer, as
  its `finish_reasons` say; every assistant turn is trained on.
- Prefix check: for each assistant turn, the rendered prompt (add_generation_prompt=True) must be
  a token prefix of the rendered conversation; otherwise the weights would point at the wrong
  tokens. One odd answer can fail it on a good template (a BPE merge across the turn boundary),
  so such a record is skipped and counted, with the first few ids reported; only when most
  records fail is the template refused, with a UserError naming the model (issue #16).
- Examples longer than `max_len` are cut from the right (`truncate`) or dropped (`drop`).
- Train/validation split by a hash of the record id: stable as samples are added. Records whose
  sampler split is "heldout" are never used here (they are the evaluation set).
- Teacher answers that are empty, or that loop (the same word 4-gram three or more times,
  core/text.py), are dropped and counted (`keep_loops` keeps the loops): a student fed loops
  learns to loop, and amplifies them (issue #13).
- Under `sample --keep correct`, answers graded wrong against their gold answer
  (`correct: false`, sampling/correct.py) are left out and counted; a later right attempt at
  the same prompt is the one trained on (issue #17). Under `--keep all` every answer trains.

The arrays and their files: datums/store.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from promptdistill.core.config import DatumConfig
from promptdistill.core.errors import UserError
from promptdistill.core.text import loops
from promptdistill.models.chat import Renderer

SPLITS = ("train", "val")
PREFIX_IDS_SHOWN = 5  # ids of records that failed the prefix check, in the stats and messages


class PrefixError(UserError):
    """The rendered prompt is not a token prefix of the rendered conversation."""


@dataclass(kw_only=True)
class Datum:
    """One training example. `weights[i]` is the loss weight of predicting `tokens[i]`."""

    id: str
    split: str  # "train" | "val"
    tokens: list[int]
    weights: list[float]
    truncated: bool = False
    # the endpoint's top-K logprobs, aligned with `tokens` (empty lists where there are none)
    top_ids: list[list[int]] | None = None
    top_logp: list[list[float]] | None = None


# --------------------------------------------------------------------------- one conversation


def split_of(record_id: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of ids, else 'train'. Depends on the id alone, so an
    example never changes split when more samples are added."""
    # the first 32 bits of sha256(id), as a fraction of 2**32 (evaluate.py uses the same rule)
    h = int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16)
    return "val" if h / 2**32 < val_fraction else "train"


def conversation_to_datum(
    messages: list[dict[str, Any]],
    renderer: Renderer,
    *,
    record_id: str = "",
    split: str = "train",
    teacher_truncated: bool = False,
    model_name: str = "the student",
    truncated_turns: frozenset[int] = frozenset(),
) -> Datum:
    """Strip system messages, render with the student's template, weight every assistant turn.

    `truncated_turns`: the (0-based) assistant turns that were cut at max_tokens; with
    `teacher_truncated` the last one is. Raises UserError if the template is not prefix-stable,
    ValueError for an unusable record.
    """
    convo = [
        {"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"
    ]
    if not convo or convo[-1]["role"] != "assistant":
        raise ValueError("conversation does not end with an assistant message")
    end_ids = set(renderer.stop_ids)
    tokens: list[int] = []
    weights: list[float] = []
    last_assistant = max(i for i, m in enumerate(convo) if m["role"] == "assistant")
    turn = -1
    for i, m in enumerate(convo):
        if m["role"] != "assistant":
            continue
        turn += 1
        prompt = renderer.tokens(convo[:i], generation_prompt=True)
        full = renderer.tokens(convo[: i + 1], generation_prompt=False)
        if full[: len(prompt)] != prompt or prompt[: len(tokens)] != tokens:
            raise PrefixError(
                f"the chat template of {model_name} is not prefix-stable: the rendered prompt is "
                f"not a token prefix of the rendered conversation (record {record_id!r}), so the "
                f"loss mask cannot be placed; use a student whose chat template renders turns "
                f"by concatenation (e.g. ChatML)"
            )
        # prompt tokens (including earlier turns already weighted above) keep their weights
        weights += [0.0] * (len(prompt) - len(tokens))
        tokens = list(prompt)
        reply = full[len(prompt) :]
        # weight the reply up to and including its last end-of-turn token; what the template
        # appends after it (a newline) is never generated, so it carries no loss
        ends = [j for j, t in enumerate(reply) if t in end_ids]
        stop = ends[-1] + 1 if ends else len(reply)
        reply_weights = [1.0] * stop + [0.0] * (len(reply) - stop)
        cut = turn in truncated_turns or (teacher_truncated and i == last_assistant)
        if cut and ends:
            reply_weights[ends[-1]] = 0.0  # the teacher was cut off, it did not stop
        tokens += reply
        weights += reply_weights
    if not any(weights):
        raise ValueError("no loss-bearing tokens")
    return Datum(id=record_id, split=split, tokens=tokens, weights=weights)


def scored_example(
    renderer: Renderer,
    messages: list[dict[str, str]],
    answer: str,
    truncated: bool = False,
    model_name: str = "the student",
) -> tuple[list[int], list[float]]:
    """(tokens, weights) of `messages` followed by `answer`, weighted as in training, for
    scoring the answer. Without a system message this is the training datum itself; with one,
    the same answer tokens and weights follow the system-prompted prompt (ChatML renders turns
    by concatenation, which `conversation_to_datum` checks)."""
    convo = [*messages, {"role": "assistant", "content": answer}]
    datum = conversation_to_datum(
        convo, renderer, teacher_truncated=truncated, model_name=model_name
    )
    if not any(m["role"] == "system" for m in messages):
        return datum.tokens, datum.weights
    bare = renderer.prompt([m for m in messages if m["role"] != "system"])
    prompt = renderer.prompt(messages)
    return prompt + datum.tokens[len(bare) :], [0.0] * len(prompt) + datum.weights[len(bare) :]


def attach_logprobs(
    d: Datum, logprobs: list[list[Any]], renderer: Renderer, record_id: str
) -> None:
    """Put an endpoint's top-K logprobs (sampling/sample.py's compact form) on the datum's last
    answer, token by token. They are usable only if the teacher's tokens are the student's: a
    token that differs is a UserError. Answer positions the endpoint gave nothing for (its
    end-of-turn token) get the sampled token with probability 1."""
    starts = [i for i in range(1, len(d.weights)) if d.weights[i] > 0 and d.weights[i - 1] == 0]
    a = starts[-1] if starts else 0
    top_ids: list[list[int]] = [[] for _ in d.tokens]
    top_logp: list[list[float]] = [[] for _ in d.tokens]
    for j, entry in enumerate(logprobs[: max(0, len(d.tokens) - a)]):
        student = renderer.token_text(d.tokens[a + j])
        if str(entry[0]) != student:
            raise UserError(
                f"sample {record_id!r}: the teacher's answer token {j} is {entry[0]!r} where the "
                f"student's tokenizer has {student!r}: the teacher's tokens are not the "
                "student's, so its logprobs cannot be used; use a student with the teacher's "
                "tokenizer (the same model family), or --objective sft"
            )
        alternatives = [(renderer.id_of_text(str(t)), float(lp)) for t, lp in entry[2]]
        known = [(i, lp) for i, lp in alternatives if i is not None]
        if not any(i == d.tokens[a + j] for i, _ in known):
            known.append((d.tokens[a + j], float(entry[1])))
        top_ids[a + j] = [i for i, _ in known]
        top_logp[a + j] = [lp for _, lp in known]
    for i, w in enumerate(d.weights):
        if w > 0 and not top_ids[i]:
            top_ids[i], top_logp[i] = [d.tokens[i]], [0.0]
    d.top_ids, d.top_logp = top_ids, top_logp


# --------------------------------------------------------------------------- the whole run


def left_out(record: dict[str, Any], keep: str) -> bool:
    """A wrong answer under `sample --keep correct`: in samples.jsonl, not in the datums."""
    return keep == "correct" and record.get("correct") is False


def usable_records(
    records: Iterable[dict[str, Any]],
    cfg: DatumConfig,
    counts: dict[str, int],
    keep_heldout: bool = False,
    keep: str = "all",
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, record) of the sampler records worth training on, counting the others: held out
    (unless `keep_heldout`), wrong answers (under `keep` "correct", the run's `sample --keep`),
    repeated ids (the first is kept), empty answers, loops. The one rule for `train`
    (build_datums) and `export --dataset` (datums/dataset.py)."""
    seen: set[str] = set()
    for r in records:
        counts["records"] += 1
        if r.get("split") == "heldout" and not keep_heldout:
            counts["heldout_skipped"] += 1
            continue
        if left_out(r, keep):  # before the duplicate check: a later attempt may be right
            counts["incorrect"] = counts.get("incorrect", 0) + 1
            continue
        rid = str(r.get("id", ""))
        if rid in seen:
            counts["duplicates"] += 1
            continue
        seen.add(rid)
        messages = r.get("messages") or []
        answers = [
            m.get("content")
            for m in messages
            if isinstance(m, dict) and m.get("role") == "assistant"
        ]
        if any(not isinstance(a, str) or not a.strip() for a in answers):
            counts["empty"] += 1
            continue
        if not cfg.keep_loops and any(loops(str(a)) for a in answers):
            counts["loops"] += 1
            continue
        yield rid, r


def build_datums(
    records: Iterable[dict[str, Any]],
    renderer: Renderer,
    cfg: DatumConfig,
    model_name: str,
    check_template: bool = True,
    keep: str = "all",
) -> tuple[list[Datum], dict[str, Any]]:
    """Turn sampler records into datums, with the stats the user sees. `check_template`:
    refuse the template when most records fail the prefix check (`check_prefix_failures`);
    a caller that builds a few records at a time (the stream) checks the running totals.
    `keep`: the run's `sample --keep` (issue #17)."""
    datums: list[Datum] = []
    prefix_ids: list[str] = []
    removed_cache: dict[str, int] = {}
    removed: list[int] = []
    counts = {
        "records": 0,
        "heldout_skipped": 0,
        "duplicates": 0,
        "invalid": 0,
        "truncated": 0,
        "dropped": 0,
        "teacher_truncated": 0,
        "empty": 0,  # an assistant answer with no text: nothing to learn but silence
        "loops": 0,  # an answer that loops (core/text.py), dropped unless keep_loops
        "prefix_failed": 0,  # its rendering fails the prefix check: skipped
        "checked": 0,  # records that reached the prefix check
        "with_logprobs": 0,  # the endpoint's top-K logprobs came with the answer
        "incorrect": 0,  # a wrong final answer, left out under `sample --keep correct`
    }
    for rid, r in usable_records(records, cfg, counts, keep=keep):
        messages = r.get("messages") or []
        teacher_cut = bool(r.get("truncated") or r.get("finish_reason") == "length")
        counts["checked"] += 1
        reasons = r.get("finish_reasons")
        cut_turns = frozenset(
            k for k, f in enumerate(reasons if isinstance(reasons, list) else []) if f == "length"
        )
        try:
            d = conversation_to_datum(
                messages,
                renderer,
                record_id=rid,
                split=split_of(rid, cfg.val_fraction),
                teacher_truncated=teacher_cut,
                model_name=model_name,
                truncated_turns=cut_turns,
            )
        except PrefixError:
            counts["prefix_failed"] += 1
            if len(prefix_ids) < PREFIX_IDS_SHOWN:
                prefix_ids.append(rid)
            continue
        except (ValueError, KeyError, TypeError):
            counts["invalid"] += 1
            continue
        counts["teacher_truncated"] += teacher_cut
        if isinstance(r.get("logprobs"), list):
            attach_logprobs(d, r["logprobs"], renderer, rid)
            counts["with_logprobs"] += 1
        if len(d.tokens) > cfg.max_len:
            if cfg.overlong == "drop" or not any(d.weights[: cfg.max_len]):
                counts["dropped"] += 1
                continue
            d.tokens, d.weights, d.truncated = (
                d.tokens[: cfg.max_len],
                d.weights[: cfg.max_len],
                True,
            )
            if d.top_ids is not None and d.top_logp is not None:
                d.top_ids, d.top_logp = d.top_ids[: cfg.max_len], d.top_logp[: cfg.max_len]
            counts["truncated"] += 1
        systems = "\n".join(m["content"] for m in messages if m.get("role") == "system")
        if systems not in removed_cache:
            removed_cache[systems] = renderer.system_tokens_removed(systems) if systems else 0
        removed.append(removed_cache[systems])
        datums.append(d)
    stats: dict[str, Any] = {**counts, "examples": len(datums), "prefix_failed_ids": prefix_ids}
    if check_template:
        check_prefix_failures(stats, model_name)
    for split in SPLITS:
        part = [d for d in datums if d.split == split]
        stats[split] = {
            "examples": len(part),
            "tokens": sum(len(d.tokens) for d in part),
            "loss_tokens": int(sum(sum(d.weights) for d in part)),
            "truncated": sum(d.truncated for d in part),
        }
    stats["tokens"] = stats["train"]["tokens"] + stats["val"]["tokens"]
    stats["loss_tokens"] = stats["train"]["loss_tokens"] + stats["val"]["loss_tokens"]
    stats["system_tokens_removed_mean"] = round(float(np.mean(removed)), 2) if removed else 0.0
    stats["max_len"], stats["overlong"] = cfg.max_len, cfg.overlong
    stats["val_fraction"] = cfg.val_fraction
    stats["keep"] = keep
    return datums, stats


def check_prefix_failures(stats: dict[str, Any], model_name: str) -> None:
    """Refuse the template when most of the records that reached the prefix check failed it:
    then the template is the problem, not the records."""
    failed, checked = int(stats.get("prefix_failed", 0)), int(stats.get("checked", 0))
    if failed and failed * 2 > checked:
        ids = ", ".join(repr(i) for i in stats.get("prefix_failed_ids", []))
        raise UserError(
            f"the chat template of {model_name} is not prefix-stable: for {failed} of {checked} "
            f"samples (first: {ids}) the rendered prompt is not a token prefix of the rendered "
            "conversation, so the loss mask cannot be placed; use a student whose chat template "
            "renders turns by concatenation (e.g. ChatML)"
        )


def prefix_note(stats: dict[str, Any]) -> str:
    """`, 2 skipped (prefix check: 'a', 'b')` for the datums line, or ''."""
    failed = int(stats.get("prefix_failed", 0))
    if not failed:
        return ""
    ids = ", ".join(repr(i) for i in stats.get("prefix_failed_ids", []))
    more = ", ..." if failed > len(stats.get("prefix_failed_ids", [])) else ""
    return (
        f", {failed} skipped (their rendered prompt is not a token prefix of the conversation: "
        f"{ids}{more})"
    )
