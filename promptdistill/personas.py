"""Load personas and prompt sets, validate them, and expand templates into user prompts.

Expansion is deterministic for a given seed and *prefix-stable*: the first N prompts for
`-n N` are the same as the first N for any larger `-n`, so a run can grow without re-asking
the teacher for prompts it already answered. Every prompt gets an id derived from its prompt
set and text, so ids survive edits to unrelated templates.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from promptdistill.core.config import Persona, PromptSet, SlotValue, Template
from promptdistill.core.errors import UserError
from promptdistill.core.yamlio import field_line, load_model

PLACEHOLDER = re.compile(
    r"\{\{|\}\}|\{(?P<slot>[a-z_][a-z0-9_]*)(?:\.(?P<field>[a-z_][a-z0-9_]*))?\}|(?P<bad>[{}])"
)


T = TypeVar("T")
_DONE = object()


@dataclass(frozen=True)
class UserPrompt:
    id: str
    text: str
    prompt_set: str
    category: str
    split: Literal["train", "heldout"]
    gold: str | None = None


@dataclass(frozen=True)
class LoadedPersona:
    """A persona with its prompt sets resolved and checked."""

    persona: Persona
    path: Path
    prompt_sets: list[PromptSet]

    @property
    def name(self) -> str:
        return self.persona.name


# --------------------------------------------------------------------------- locating files


def data_root() -> Path:
    """Where personas/ and prompts/ live: $PROMPTDISTILL_DATA, the cwd, or the source tree."""
    if env := os.environ.get("PROMPTDISTILL_DATA"):
        return Path(env)
    if (Path.cwd() / "personas").is_dir():
        return Path.cwd()
    return Path(__file__).resolve().parent.parent


def persona_names(root: Path | None = None) -> list[str]:
    folder = (root or data_root()) / "personas"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def persona_path(name_or_path: str, root: Path | None = None) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not candidate.is_file():
            raise UserError(f"persona file {candidate} not found")
        return candidate
    root = root or data_root()
    path = root / "personas" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(persona_names(root)) or "none"
        raise UserError(
            f"unknown persona '{name_or_path}' (looked in {root / 'personas'}; known: {known}); "
            "pass a persona name or a path to a .yaml file"
        )
    return path


def load_prompt_set(name: str, prompts_dir: Path, referenced_from: Path) -> PromptSet:
    path = prompts_dir / f"{name}.yaml"
    if not path.is_file():
        raise UserError(
            f"{field_line(referenced_from, ('prompt_sets',))}: field 'prompt_sets': "
            f"prompt set '{name}' not found (expected {path})"
        )
    prompt_set = load_model(path, PromptSet)
    if prompt_set.name != path.stem:
        raise UserError(
            f"{field_line(path, ('name',))}: field 'name': '{prompt_set.name}' must match "
            f"the file name '{path.stem}'"
        )
    check_templates(prompt_set, path)
    return prompt_set


def load_persona(name_or_path: str, root: Path | None = None) -> LoadedPersona:
    path = persona_path(name_or_path, root)
    persona = load_model(path, Persona)
    if persona.name != path.stem:
        raise UserError(
            f"{field_line(path, ('name',))}: field 'name': '{persona.name}' must match "
            f"the file name '{path.stem}'"
        )
    # prompt sets live in a prompts/ folder beside the personas/ folder holding this file;
    # a set listed twice is used once (else its held-out prompts are asked twice, issue #16)
    prompts_dir = path.resolve().parent.parent / "prompts"
    names = list(dict.fromkeys(persona.prompt_sets))
    sets = [load_prompt_set(s, prompts_dir, path) for s in names]
    if len(names) < len(persona.prompt_sets):
        persona = persona.model_copy(update={"prompt_sets": names})
    return LoadedPersona(persona=persona, path=path, prompt_sets=sets)


@dataclass(frozen=True)
class PersonaEntry:
    """One file of personas/: the persona, or why it could not be loaded."""

    name: str
    path: Path
    loaded: LoadedPersona | None
    error: str | None = None


def list_personas(root: Path | None = None) -> list[PersonaEntry]:
    """Every persona file, broken ones included (with their error): one bad file must not
    hide the others (issue #16)."""
    folder = (root or data_root()) / "personas"
    out = []
    for name in persona_names(root):
        try:
            out.append(PersonaEntry(name=name, path=folder / f"{name}.yaml",
                                    loaded=load_persona(name, root)))  # fmt: skip
        except UserError as e:
            out.append(PersonaEntry(name=name, path=folder / f"{name}.yaml", loaded=None,
                                    error=str(e)))  # fmt: skip
    return out


def load_all_personas(root: Path | None = None) -> list[LoadedPersona]:
    return [load_persona(n, root) for n in persona_names(root)]


def same_persona(a: str, b: str, root: Path | None = None) -> bool:
    """Do `a` and `b` (each a name or a path) name the same persona file? `tiny` and
    `personas/tiny.yaml` do. Names that resolve to nothing compare as text."""
    if a == b:
        return True
    try:
        return persona_path(a, root).resolve() == persona_path(b, root).resolve()
    except (UserError, OSError):
        return False


# --------------------------------------------------------------------------- templates


def _slots_for(prompt_set: PromptSet, category: str) -> dict[str, list[SlotValue]]:
    return {**prompt_set.slots, **prompt_set.categories[category].slots}


def _field_of(value: SlotValue, field: str | None) -> str | None:
    if isinstance(value, str):
        return value if field in (None, "text") else None
    return value.field(field or "text")


def placeholders(text: str) -> list[tuple[str, str | None]]:
    """(slot, field) pairs in order; raises ValueError on a stray brace."""
    found = []
    for m in PLACEHOLDER.finditer(text):
        if m.group("bad"):
            raise ValueError(f"stray '{m.group('bad')}' (write '{{{{' or '}}}}' for a brace)")
        if m.group("slot"):
            found.append((m.group("slot"), m.group("field")))
    return found


def check_templates(prompt_set: PromptSet, path: Path) -> None:
    """Every placeholder must name a slot (and a field present in every value)."""
    for cat_name, cat in prompt_set.categories.items():
        slots = _slots_for(prompt_set, cat_name)
        for i, template in enumerate(cat.templates):
            for attr in ("text", "gold"):
                text = getattr(template, attr)
                if text is None:
                    continue
                loc = ("categories", cat_name, "templates", i)
                field = f"categories.{cat_name}.templates.{i}" + (".gold" if attr == "gold" else "")
                try:
                    used = placeholders(text)
                except ValueError as e:
                    raise UserError(f"{field_line(path, loc)}: field '{field}': {e}") from None
                for slot, sub in used:
                    if slot not in slots:
                        known = ", ".join(sorted(slots)) or "none"
                        raise UserError(
                            f"{field_line(path, loc)}: field '{field}': unknown slot '{{{slot}}}' "
                            f"(defined slots: {known}); define it under 'slots'"
                        )
                    if sub and any(_field_of(v, sub) is None for v in slots[slot]):
                        raise UserError(
                            f"{field_line(path, loc)}: field '{field}': slot '{slot}' has values "
                            f"without a '{sub}' field"
                        )


def render(text: str, values: dict[str, SlotValue]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        value = _field_of(values[m.group("slot")], m.group("field"))
        assert value is not None  # check_templates guarantees it
        return value

    return PLACEHOLDER.sub(sub, text)


@dataclass(frozen=True)
class _CompiledTemplate:
    template: Template
    category: str
    slot_names: list[str]
    values: list[list[SlotValue]]

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.values)

    def combination(self, index: int) -> dict[str, SlotValue]:
        """Decode a combination index (mixed radix) into slot values."""
        chosen = {}
        for name, vals in zip(self.slot_names, self.values, strict=True):
            index, r = divmod(index, len(vals))
            chosen[name] = vals[r]
        return chosen


def _compile(prompt_set: PromptSet) -> dict[str, list[_CompiledTemplate]]:
    compiled: dict[str, list[_CompiledTemplate]] = {}
    for cat_name, cat in prompt_set.categories.items():
        slots = _slots_for(prompt_set, cat_name)
        for t in cat.templates:
            names = list(dict.fromkeys(s for s, _ in placeholders(t.text + (t.gold or ""))))
            compiled.setdefault(cat_name, []).append(
                _CompiledTemplate(t, cat_name, names, [slots[n] for n in names])
            )
    return compiled


def _permutation(size: int, rng: random.Random) -> Iterator[int]:
    """A seeded permutation of range(size), lazy for huge spaces."""
    if size <= 200_000:
        yield from rng.sample(range(size), size)
        return
    # affine permutation i -> (a*i + b) mod size, with a coprime to size
    a = rng.randrange(1, size)
    while math.gcd(a, size) != 1:
        a += 1
    b = rng.randrange(size)
    for i in range(size):
        yield (a * i + b) % size


def _template_stream(t: _CompiledTemplate, seed: int, key: str) -> Iterator[tuple[str, str | None]]:
    rng = random.Random(f"{seed}:{key}")
    for index in _permutation(t.size, rng):
        values = t.combination(index)
        gold = render(t.template.gold, values) if t.template.gold is not None else None
        yield render(t.template.text, values), gold


def _tagged(
    set_name: str, cat: str, stream: Iterator[tuple[str, str | None]]
) -> Iterator[tuple[str, str, str, str | None]]:
    for text, gold in stream:
        yield set_name, cat, text, gold


def prompt_id(prompt_set: str, text: str) -> str:
    return f"{prompt_set}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def iter_training_prompts(prompt_sets: list[PromptSet], seed: int) -> Iterator[UserPrompt]:
    """Distinct prompts, round-robin over categories then templates, never a held-out one."""
    seen = {h.prompt for s in prompt_sets for h in s.heldout}
    # one stream per category; each category stream round-robins over its templates
    streams: list[Iterator[tuple[str, str, str, str | None]]] = []
    for s in prompt_sets:
        for cat, templates in _compile(s).items():
            per_template = [
                _template_stream(t, seed, f"{s.name}:{cat}:{i}") for i, t in enumerate(templates)
            ]
            streams.append(_tagged(s.name, cat, _round_robin(per_template)))
    for set_name, cat, text, gold in _round_robin(streams):
        if text in seen:
            continue
        seen.add(text)
        yield UserPrompt(prompt_id(set_name, text), text, set_name, cat, "train", gold)


def _round_robin(streams: list[Iterator[T]]) -> Iterator[T]:
    active = list(streams)
    while active:
        for it in list(active):
            item = next(it, _DONE)
            if item is _DONE:
                active.remove(it)
            else:
                yield item  # type: ignore[misc]


def expand_prompts(persona: LoadedPersona, n: int, seed: int = 0) -> list[UserPrompt]:
    """The first `n` training prompts for this persona and seed."""
    prompts = list(itertools.islice(iter_training_prompts(persona.prompt_sets, seed), n))
    if len(prompts) < n:
        raise UserError(
            f"persona '{persona.name}': its prompt sets yield only {len(prompts)} distinct "
            f"prompts but -n {n} was asked; lower -n or add templates or slot values"
        )
    return prompts


def heldout_prompts(persona: LoadedPersona) -> list[UserPrompt]:
    """The fixed held-out prompts, each once (a prompt listed twice has one id)."""
    out: dict[str, UserPrompt] = {}
    for s in persona.prompt_sets:
        for h in s.heldout:
            pid = prompt_id(s.name, h.prompt)
            out.setdefault(pid, UserPrompt(pid, h.prompt, s.name, "heldout", "heldout", h.gold))
    return list(out.values())


def count_distinct(persona: LoadedPersona) -> int:
    return sum(1 for _ in iter_training_prompts(persona.prompt_sets, seed=0))
