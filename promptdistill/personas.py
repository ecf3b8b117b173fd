"""Load personas and prompt sets, validate them, and expand them into user prompts.

Files are looked for in `--data-dir`, $PROMPTDISTILL_DATA, the current directory, then the
personas shipped inside the package (`data_roots`). A prompt set's prompts come from its
templates and from its `sources:` (prompt files and datasets, sources.py).

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

from promptdistill.core.config import Persona, PromptSet, SlotValue, Template
from promptdistill.core.errors import UserError
from promptdistill.core.yamlio import field_line, load_model
from promptdistill.sources import LoadedSource, load_sources

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
    """A persona with its prompt sets (and their sources' prompts) resolved and checked."""

    persona: Persona
    path: Path
    prompt_sets: list[PromptSet]
    # per prompt set name: its sources, read (sources.py)
    sources: dict[str, list[LoadedSource]] = field(default_factory=dict)
    prompt_set_paths: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.persona.name


# --------------------------------------------------------------------------- locating files


def shipped_root() -> Path:
    """The personas/ and prompts/ shipped inside the package (package data, issue #14)."""
    root = resources.files("promptdistill") / "data"
    if not isinstance(root, Path):  # a zipped install: the YAML loaders need real files
        raise UserError(
            f"the shipped personas are inside an archive ({root}); install promptdistill "
            "unzipped (pip install, pipx, uv tool install) or set PROMPTDISTILL_DATA"
        )
    return root


def data_roots(data_dir: str | Path | None = None) -> list[Path]:
    """Where personas/ and prompts/ are looked for, first match first: `--data-dir`,
    $PROMPTDISTILL_DATA (one or more folders, separated like PATH), the current directory,
    then the shipped ones. A user's persona of the same name hides a shipped one."""
    roots: list[Path] = [Path(data_dir).expanduser()] if data_dir else []
    env = os.environ.get("PROMPTDISTILL_DATA", "")
    roots += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    roots += [Path.cwd(), shipped_root()]
    unique: dict[Path, Path] = {}
    for r in roots:
        unique.setdefault(r.resolve(), r)
    return list(unique.values())


def _roots(root: Path | Sequence[Path] | None) -> list[Path]:
    """A single root (tests, tools) is searched alone; None is the default search path."""
    if root is None:
        return data_roots()
    return [root] if isinstance(root, Path) else list(root)


def persona_names(root: Path | Sequence[Path] | None = None) -> list[str]:
    names: set[str] = set()
    for r in _roots(root):
        if (r / "personas").is_dir():
            names |= {p.stem for p in (r / "personas").glob("*.yaml")}
    return sorted(names)


def persona_path(name_or_path: str, root: Path | Sequence[Path] | None = None) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not candidate.is_file():
            raise UserError(f"persona file {candidate} not found")
        return candidate
    roots = _roots(root)
    for r in roots:
        path = r / "personas" / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = ", ".join(persona_names(roots)) or "none"
    looked = ", ".join(str(r / "personas") for r in roots)
    raise UserError(
        f"unknown persona '{name_or_path}' (looked in {looked}; known: {known}); pass a persona "
        "name or a path to a .yaml file, or create one with `promptdistill init NAME`"
    )


def prompt_set_path(
    name: str, persona_file: Path, root: Path | Sequence[Path] | None = None
) -> Path:
    """A prompt set's file: the prompts/ folder beside the persona's personas/ folder first,
    then the search path (so a user's persona may use a shipped prompt set)."""
    folders = [persona_file.resolve().parent.parent / "prompts"]
    folders += [r / "prompts" for r in _roots(root)]
    for folder in folders:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    raise UserError(
        f"{field_line(persona_file, ('prompt_sets',))}: field 'prompt_sets': prompt set "
        f"'{name}' not found (expected {folders[0] / f'{name}.yaml'}); create it or fix the name"
    )


def load_prompt_set(path: Path) -> PromptSet:
    prompt_set = load_model(path, PromptSet)
    if prompt_set.name != path.stem:
        raise UserError(
            f"{field_line(path, ('name',))}: field 'name': '{prompt_set.name}' must match "
            f"the file name '{path.stem}'"
        )
    check_templates(prompt_set, path)
    return prompt_set


def load_persona(name_or_path: str, root: Path | Sequence[Path] | None = None) -> LoadedPersona:
    path = persona_path(name_or_path, root)
    persona = load_model(path, Persona)
    if persona.name != path.stem:
        raise UserError(
            f"{field_line(path, ('name',))}: field 'name': '{persona.name}' must match "
            f"the file name '{path.stem}'"
        )
    # a prompt set listed twice is used once (else its held-out prompts are asked twice, #16)
    names = list(dict.fromkeys(persona.prompt_sets))
    if len(names) < len(persona.prompt_sets):
        persona = persona.model_copy(update={"prompt_sets": names})
    paths = {s: prompt_set_path(s, path, root) for s in names}
    sets = [load_prompt_set(paths[s]) for s in names]
    sources = {s.name: load_sources(s.sources, paths[s.name]) for s in sets if s.sources}
    return LoadedPersona(
        persona=persona, path=path, prompt_sets=sets, sources=sources, prompt_set_paths=paths
    )


@dataclass(frozen=True)
class PersonaEntry:
    """One file of personas/: the persona, or why it could not be loaded."""

    name: str
    path: Path
    loaded: LoadedPersona | None
    error: str | None = None


def list_personas(root: Path | Sequence[Path] | None = None) -> list[PersonaEntry]:
    """Every persona on the search path, broken ones included (with their error): one bad
    file must not hide the others (issue #16)."""
    roots = _roots(root)
    out = []
    for name in persona_names(roots):
        path = persona_path(name, roots)  # the one that wins: the first folder's
        try:
            out.append(PersonaEntry(name=name, path=path, loaded=load_persona(name, roots)))
        except UserError as e:
            out.append(PersonaEntry(name=name, path=path, loaded=None, error=str(e)))
    return out


def recorded_data_dir(persona: str, loaded: LoadedPersona, data_dir: Path | None) -> str | None:
    """What a run records as `sample.data_dir`: `--data-dir`, else the folder a user's persona
    was found in by name (the current directory, $PROMPTDISTILL_DATA), so that train, eval and
    compare find it again from any folder. None for a shipped persona or a persona file."""
    if data_dir is not None:
        return str(Path(data_dir).expanduser().resolve())
    path = loaded.path.resolve()
    if persona != path.stem or path.is_relative_to(shipped_root().resolve()):
        return None
    return str(path.parent.parent)


def load_run_persona(persona: str, data_dir: str | None) -> LoadedPersona:
    """The persona a run was sampled with (`sample.persona` and `sample.data_dir` of its
    config.yaml), found again the way `sample` found it."""
    return load_persona(persona, data_roots(data_dir))


def load_all_personas(root: Path | Sequence[Path] | None = None) -> list[LoadedPersona]:
    roots = _roots(root)
    return [load_persona(n, roots) for n in persona_names(roots)]


def same_persona(a: str, b: str, root: Path | Sequence[Path] | None = None) -> bool:
    """Do `a` and `b` (each a name or a path) name the same persona file? `tiny` and
    `personas/tiny.yaml` do. Names that resolve to nothing compare as text."""
    if a == b:
        return True
    try:
        return persona_path(a, root).resolve() == persona_path(b, root).resolve()
    except (UserError, OSError):
        return False


def teacher_system(persona: LoadedPersona, prompt_set: str | None = None) -> str:
    """The teacher's system prompt for a prompt of `prompt_set`: the persona's, then its
    `teacher_instructions`, then the prompt set's (issue #17), blank-line separated.

    One system message, not a second one: every chat template renders a single system turn,
    while several reject or drop a second (Llama 3 keeps the first, Gemma allows none), and
    the shared prefix stays cacheable. datums/build.py strips the whole system message, so the
    instructions never reach the student."""
    parts = [persona.persona.system_prompt, persona.persona.teacher_instructions]
    parts += [s.teacher_instructions for s in persona.prompt_sets if s.name == prompt_set]
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def instructions_text(persona: LoadedPersona) -> str:
    """Every teacher instruction of the persona and its prompt sets ("" when none): part of
    the sampling fingerprint (pipeline/ledger.py)."""
    parts = [persona.persona.teacher_instructions or ""]
    parts += [f"{s.name}: {s.teacher_instructions}" for s in persona.prompt_sets
              if s.teacher_instructions]  # fmt: skip
    return "\n".join(p for p in parts if p)


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


def _source_stream(source: LoadedSource, seed: int, key: str) -> Iterator[tuple[str, str | None]]:
    """A source's training prompts in a seeded order (logs are often in time order)."""
    rng = random.Random(f"{seed}:{key}")
    for index in _permutation(len(source.train), rng):
        yield source.train[index].text, source.train[index].gold


def iter_training_prompts(
    prompt_sets: list[PromptSet],
    seed: int,
    sources: Mapping[str, list[LoadedSource]] | None = None,
) -> Iterator[UserPrompt]:
    """Distinct prompts, round-robin over categories (then templates) and sources, never a
    held-out one."""
    sources = sources or {}
    seen = {h.prompt for s in prompt_sets for h in s.heldout}
    seen |= {p.text for loaded in sources.values() for src in loaded for p in src.heldout}
    # one stream per category and per source; each category stream round-robins its templates
    streams: list[Iterator[tuple[str, str, str, str | None]]] = []
    for s in prompt_sets:
        for cat, templates in _compile(s).items():
            per_template = [
                _template_stream(t, seed, f"{s.name}:{cat}:{i}") for i, t in enumerate(templates)
            ]
            streams.append(_tagged(s.name, cat, _round_robin(per_template)))
        for i, src in enumerate(sources.get(s.name, [])):
            streams.append(
                _tagged(s.name, src.label, _source_stream(src, seed, f"{s.name}:src:{i}"))
            )
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
    stream = iter_training_prompts(persona.prompt_sets, seed, persona.sources)
    prompts = list(itertools.islice(stream, n))
    if len(prompts) < n:
        raise UserError(
            f"persona '{persona.name}': its prompt sets yield only {len(prompts)} distinct "
            f"prompts but -n {n} was asked; lower -n, or add templates, slot values or prompt "
            "sources (`promptdistill prompts generate` writes one)"
        )
    return prompts


def heldout_prompts(persona: LoadedPersona) -> list[UserPrompt]:
    """The prompt sets' fixed held-out prompts, then their sources' held-out share; each once
    (a prompt listed twice has one id)."""
    out: dict[str, UserPrompt] = {}
    for s in persona.prompt_sets:
        for h in s.heldout:
            pid = prompt_id(s.name, h.prompt)
            out.setdefault(pid, UserPrompt(pid, h.prompt, s.name, "heldout", "heldout", h.gold))
    for s in persona.prompt_sets:
        for src in persona.sources.get(s.name, []):
            for p in src.heldout:
                pid = prompt_id(s.name, p.text)
                out.setdefault(pid, UserPrompt(pid, p.text, s.name, "heldout", "heldout", p.gold))
    return list(out.values())


def count_distinct(persona: LoadedPersona) -> int:
    return sum(1 for _ in iter_training_prompts(persona.prompt_sets, 0, persona.sources))
