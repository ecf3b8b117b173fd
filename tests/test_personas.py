"""Persona and prompt-set files: every shipped file parses, expansion is deterministic,
and each kind of bad input gets a one-line error naming the file and field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptdistill.core.errors import UserError
from promptdistill.personas import (
    count_distinct,
    expand_prompts,
    heldout_prompts,
    load_all_personas,
    load_persona,
    persona_names,
)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "promptdistill" / "data"  # the shipped personas and prompt sets (package data)


def test_every_shipped_file_parses() -> None:
    personas = load_all_personas(DATA)
    assert len(personas) >= 3
    used_sets = {s.name for p in personas for s in p.prompt_sets}
    shipped_sets = {p.stem for p in (DATA / "prompts").glob("*.yaml")}
    assert shipped_sets == used_sets, "every prompt set is used by a persona"


def test_beethoven_meets_the_spec() -> None:
    p = load_persona("beethoven", DATA)
    words = len(p.persona.system_prompt.split())
    assert 500 <= words <= 700, words
    (beethoven,) = p.prompt_sets
    assert sum(len(c.templates) for c in beethoven.categories.values()) >= 30
    assert {"biographical", "musical", "historical", "creative", "personal"} <= set(
        beethoven.categories
    )
    assert count_distinct(p) >= 5000
    assert len(heldout_prompts(p)) >= 40


def test_other_personas_have_distinct_prompt_sets_and_heldout() -> None:
    for name in persona_names(DATA):
        p = load_persona(name, DATA)
        assert count_distinct(p) >= 1000, name
        assert heldout_prompts(p), name


def test_mathtutor_prompts_carry_gold_answers() -> None:
    p = load_persona("mathtutor", DATA)
    prompts = expand_prompts(p, 200, seed=0)
    assert all(u.gold for u in prompts)
    assert all(h.gold for h in heldout_prompts(p))


def test_expansion_is_deterministic_distinct_and_prefix_stable() -> None:
    p = load_persona("beethoven", DATA)
    a = expand_prompts(p, 5000, seed=7)
    b = expand_prompts(p, 5000, seed=7)
    assert [x.text for x in a] == [x.text for x in b]
    assert len({x.text for x in a}) == 5000
    assert len({x.id for x in a}) == 5000
    # growing -n keeps the prompts (and ids) already chosen, so a run can be extended
    assert [x.id for x in expand_prompts(p, 6000, seed=7)[:5000]] == [x.id for x in a]
    # another seed gives another order
    assert [x.text for x in expand_prompts(p, 50, seed=8)] != [x.text for x in a[:50]]


def test_expansion_balances_categories_and_never_emits_heldout() -> None:
    p = load_persona("beethoven", DATA)
    first = expand_prompts(p, 100, seed=0)
    cats = {x.category for x in first}
    assert len(cats) >= 5
    heldout = {h.text for h in heldout_prompts(p)}
    assert not heldout & {x.text for x in expand_prompts(p, 5000, seed=0)}


def test_asking_for_more_than_exists_is_a_clear_error() -> None:
    p = load_persona("beethoven", DATA)
    with pytest.raises(UserError, match="yield only .* lower -n"):
        expand_prompts(p, 10_000_000, seed=0)


# --------------------------------------------------------------------------- bad input via CLI

GOOD_PERSONA = """\
name: pirate
description: A pirate
system_prompt: |
  You are a pirate.
prompt_sets: [pirate]
"""

GOOD_PROMPTS = """\
name: pirate
slots:
  thing: [ships, rum, maps]
categories:
  sea:
    templates:
      - "Tell me about {thing}."
      - text: "Where are the {thing}?"
heldout:
  - prompt: "Who are you?"
"""


def _run_prompts(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROMPTDISTILL_DATA": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "promptdistill", "prompts", "pirate", "-n", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _write(root: Path, persona: str | bytes, prompts: str | bytes) -> None:
    (root / "personas").mkdir(exist_ok=True)
    (root / "prompts").mkdir(exist_ok=True)
    for path, content in (
        (root / "personas/pirate.yaml", persona),
        (root / "prompts/pirate.yaml", prompts),
    ):
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def test_a_good_custom_persona_works(tmp_path: Path) -> None:
    _write(tmp_path, GOOD_PERSONA, GOOD_PROMPTS)
    result = _run_prompts(tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


BAD_CASES = {
    "missing field": (
        GOOD_PERSONA.replace("description: A pirate\n", ""),
        GOOD_PROMPTS,
        "personas/pirate.yaml",
        "description",
    ),
    "wrong type": (
        GOOD_PERSONA + "sampling:\n  temperature: hot\n",
        GOOD_PROMPTS,
        "personas/pirate.yaml:7",
        "sampling.temperature",
    ),
    "empty template list": (
        GOOD_PERSONA,
        GOOD_PROMPTS.replace(
            "    templates:\n"
            '      - "Tell me about {thing}."\n'
            '      - text: "Where are the {thing}?"\n',
            "    templates: []\n",
        ),
        "prompts/pirate.yaml:6",
        "categories.sea.templates",
    ),
    "unknown slot": (
        GOOD_PERSONA,
        GOOD_PROMPTS.replace("Tell me about {thing}.", "Tell me about {treasure}."),
        "prompts/pirate.yaml:7",
        "unknown slot '{treasure}'",
    ),
    "not utf-8": (
        GOOD_PERSONA.encode().replace(b"A pirate", b"A pirat\xe9"),
        GOOD_PROMPTS,
        "personas/pirate.yaml",
        "not UTF-8",
    ),
    "yaml syntax error": (
        GOOD_PERSONA,
        GOOD_PROMPTS.replace("thing: [ships, rum, maps]", "thing: [ships, rum, maps"),
        "prompts/pirate.yaml",
        "YAML syntax error",
    ),
    # issue #16: a blank prompt was accepted; a quote never closed was reported at the file's end
    "whitespace-only system prompt": (
        GOOD_PERSONA.replace("|\n  You are a pirate.\n", '"  \\n "\n'),
        GOOD_PROMPTS,
        "personas/pirate.yaml:3",
        "system_prompt': the system prompt is blank",
    ),
    "unterminated quote": (
        GOOD_PERSONA.replace("description: A pirate", 'description: "A pirate'),
        GOOD_PROMPTS,
        "personas/pirate.yaml:2",
        "a quoted scalar opened here is never closed",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_naming_file_and_field(tmp_path: Path, case: str) -> None:
    persona, prompts, where, what = BAD_CASES[case]
    _write(tmp_path, persona, prompts)
    result = _run_prompts(tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert where in lines[0] and what in lines[0], lines[0]


def test_unknown_persona_lists_the_known_ones(tmp_path: Path) -> None:
    _write(tmp_path, GOOD_PERSONA, GOOD_PROMPTS)
    env = {**os.environ, "PROMPTDISTILL_DATA": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "promptdistill", "prompts", "parrot"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode != 0
    assert "unknown persona 'parrot'" in result.stderr and "pirate" in result.stderr


@pytest.mark.slow
def test_personas_lists_the_good_ones_and_flags_the_broken_and_the_too_long(
    tmp_path: Path,
) -> None:
    """One broken persona file made `personas` fail as a whole (issue #16); now it is listed
    as broken with its error, and a prompt longer than the model's context is flagged."""
    _write(tmp_path, GOOD_PERSONA, GOOD_PROMPTS)
    (tmp_path / "personas/broken.yaml").write_text(GOOD_PERSONA.replace("name: pirate", "name: ["))
    long_prompt = " ".join(f"rule{i}" for i in range(9000))  # > 8192 tokens
    (tmp_path / "personas/verbose.yaml").write_text(
        GOOD_PERSONA.replace("name: pirate", "name: verbose").replace(
            "You are a pirate.", long_prompt
        )
    )
    env = {**os.environ, "PROMPTDISTILL_DATA": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "promptdistill", "personas"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines()
            if line.count("│") > 2}  # fmt: skip
    assert "pirate" in rows and "A pirate" in rows["pirate"]
    assert "broken" in rows and "broken" in rows["broken"].split("│")[2]
    assert "verbose" in rows and "> 8192" in rows["verbose"]
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 2, result.stderr
    assert said[0].startswith("warning: persona 'broken' is broken: ")
    assert f"{tmp_path / 'personas/broken.yaml'}:" in said[0] and "YAML syntax" in said[0]
    assert "warning: the system prompt of persona 'verbose' is" in said[1]
    assert "longer than the context of smollm2-135m (8192 tokens)" in said[1]
