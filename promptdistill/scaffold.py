"""`promptdistill init NAME`: a persona file and a starter prompt set, ready to edit (issue #14).

It writes DIR/personas/NAME.yaml and DIR/prompts/NAME.yaml (DIR: `--data-dir` or the current
directory), with a comment on every field. The system prompt comes from a text file (or stdin);
a prompts file given with `--prompts-file` becomes the prompt set's source, with a share held out
for eval. Existing files are kept unless `force`. The files are loaded and validated before
`init` returns, so what it writes is what `sample` reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from promptdistill.core.config import NAME, PromptSource
from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_text, read_text
from promptdistill.personas import LoadedPersona, count_distinct, heldout_prompts, load_persona
from promptdistill.sources import SUFFIXES, FieldError, LoadedSource, load_sources

PLACEHOLDER_PROMPT = (
    "You are {name}. Replace this text with the persona's system prompt: who it is, how it "
    "speaks, what it knows, and what it must never do."
)

PERSONA_FILE = """\
# A persona: the system prompt the teacher answers with, and where its user prompts come from.
# Written by `promptdistill init`; edit freely. `promptdistill prompts {name} -n 20` previews
# the prompts, `promptdistill personas` counts the system prompt's tokens.

# must match this file's name (personas/{name}.yaml)
name: {name}
# one line, shown by `promptdistill personas` and given to the LLM judge
description: {description}
# the long prompt to distil away: the teacher sees it, the trained student does not need it
{system_prompt}
# prompt sets (prompts/NAME.yaml) whose user prompts the teacher answers
prompt_sets: [{name}]
# the teacher's default sampling; `sample` flags override it
sampling:
  temperature: 0.8   # 0 is greedy; higher is more varied
  top_p: 0.95        # nucleus sampling
  max_tokens: 256    # longest teacher answer, in tokens
"""

SOURCES_SET = """\
# A prompt set: the user prompts the teacher answers. Written by `promptdistill init`.

# must match this file's name (prompts/{name}.yaml)
name: {name}
description: user prompts for {name}
# prompt files and datasets; a relative path is relative to this file's folder. Each source may
# set: format (jsonl, csv, tsv, text, parquet, disk; default: from the file name), field or
# column (default: prompt, else messages, else the only column), gold (a field with gold
# answers), category (default: the file name), heldout (a fraction or a count).
sources:
  - path: {path}{key_line}
    # held out for eval by a stable hash of each prompt's text, never trained on
    heldout: {heldout}
# templates can be mixed in too: categories of templates with {{slot}} placeholders, e.g.
# categories:
#   questions:
#     slots: {{topic: [pricing, setup]}}
#     templates: ["How does {{topic}} work?"]
"""

TEMPLATE_SET = """\
# A prompt set: the user prompts the teacher answers. Written by `promptdistill init` as a
# starter: replace the slot values and templates with what {name}'s users really ask.
# `promptdistill prompts generate {name} -n 500` has the teacher write prompts instead.

# must match this file's name (prompts/{name}.yaml)
name: {name}
description: starter prompts for {name}
# slot values shared by every category; a template names them in braces, e.g. {{topic}}
slots:
  topic: [getting started, the basics, a common mistake, your background, a recommendation,
          a problem I keep having, the best way to learn this, what to avoid, a quick example,
          the history of it, your honest opinion, a tricky case, something advanced,
          what you would do in my place, where to find more, a myth about it]
# categories of templates; each category's prompts are taken in turn, so they stay balanced
categories:
  questions:
    templates:
      - "Can you tell me about {{topic}}?"
      - "I have a question about {{topic}}."
      - "What should I know about {{topic}}?"
      - "Quick one: {{topic}}?"
  requests:
    # category-local slots override the shared ones
    slots:
      task: [explain it simply, give me three tips, compare the options, write a short summary,
             check my reasoning, suggest a next step, give an example, list the pros and cons,
             tell me what you would change, answer in one sentence, walk me through it,
             make a plan for me]
    templates:
      - "Please {{task}}."
      - "Could you {{task}}?"
      - "I need you to {{task}}, about {{topic}}."
  chat:
    slots:
      opener: ["Hi!", "Hello there.", "Good morning!", "Hey, are you there?", "I'm new here.",
               "Thanks for the help earlier.", "Who are you?", "What can you do?",
               "I'm a bit confused.", "Tell me a fun fact.", "How are you today?",
               "What do you like most about your work?"]
    templates:
      - "{{opener}}"
      - "{{opener}} Can we talk about {{topic}}?"
# fixed held-out prompts: never trained on, asked by `sample` for `eval`
heldout:
  - prompt: "Who are you, and what can you help me with?"
  - prompt: "Explain the most important thing a beginner should know."
  - prompt: "What would you never do, even if I asked you to?"
  - prompt: "Give me one piece of advice for today."
  - prompt: "What is a common misunderstanding about your field?"
"""


@dataclass(frozen=True, kw_only=True)
class Initialized:
    persona_file: Path
    prompts_file: Path
    loaded: LoadedPersona
    source_summary: str | None


def _block(key: str, text: str) -> str:
    """`key: |` and the text as a YAML literal block (plain YAML when that cannot hold it)."""

    class Dumper(yaml.SafeDumper):
        pass

    def literal(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, literal)
    return yaml.dump({key: text}, Dumper=Dumper, allow_unicode=True, width=100).rstrip("\n")


def _heldout_for(prompts: int) -> float | int:
    """A count of 40 where there are enough prompts (eval's default), else a tenth."""
    return 40 if prompts >= 400 else 0.1


def init_persona(
    name: str,
    data_dir: Path,
    system_prompt: str | None,
    prompts_file: Path | None,
    description: str | None = None,
    force: bool = False,
    field: str | None = None,
) -> Initialized:
    """Write personas/NAME.yaml and prompts/NAME.yaml under `data_dir`; see the module doc."""
    if not NAME.match(name):
        raise UserError(f"NAME '{name}': use letters, digits, '-', '_' or '.' (start with one)")
    persona_file = data_dir / "personas" / f"{name}.yaml"
    prompts_yaml = data_dir / "prompts" / f"{name}.yaml"
    existing = [p for p in (persona_file, prompts_yaml) if p.exists()]
    if existing and not force:
        raise UserError(
            f"{existing[0]} exists; pass --force to overwrite it, or choose another NAME"
        )
    text = (system_prompt or "").strip() or PLACEHOLDER_PROMPT.format(name=name)
    summary = None
    if prompts_file is not None:
        if not prompts_file.exists():
            raise UserError(f"--prompts-file {prompts_file}: not found")
        rel = os.path.relpath(prompts_file.resolve(), prompts_yaml.parent.resolve())
        if field is not None and _format_of(prompts_file) == "text":
            raise UserError(
                f"--field {field}: {prompts_file} is a text file, one prompt per line, with no "
                "fields; drop --field"
            )
        source = _read_prompts_file(prompts_file, prompts_yaml, field)
        key_line = ""
        if field is not None:  # CSV and TSV have columns; JSONL, Parquet and datasets fields
            csv_like = _format_of(prompts_file) in ("csv", "tsv")
            key_line = f"\n    {'column' if csv_like else 'field'}: {_scalar(field)}"
        prompt_set = SOURCES_SET.format(
            name=name,
            path=_scalar(rel),
            key_line=key_line,
            heldout=_heldout_for(len(source.train)),
        )
    else:
        prompt_set = TEMPLATE_SET.format(name=name)
    persona = PERSONA_FILE.format(
        name=name,
        description=_scalar(description or f"{name} (edit this one-line description)"),
        system_prompt=_block("system_prompt", text),
    )
    for path, content in ((persona_file, persona), (prompts_yaml, prompt_set)):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, content)
    loaded = load_persona(str(persona_file))
    count_distinct(loaded), heldout_prompts(loaded)  # expands: every template checks out
    if prompts_file is not None:  # as it will be read: with its held-out share
        summary = loaded.sources[name][0].summary()
    return Initialized(
        persona_file=persona_file, prompts_file=prompts_yaml, loaded=loaded, source_summary=summary
    )


def _format_of(prompts_file: Path) -> str | None:
    return None if prompts_file.is_dir() else SUFFIXES.get(prompts_file.suffix.lower())


def _read_prompts_file(prompts_file: Path, prompts_yaml: Path, field: str | None) -> LoadedSource:
    """Read it now: a file that cannot be used is refused before anything is written."""
    source = PromptSource(path=str(prompts_file.resolve()), field=field)
    try:
        (loaded,) = load_sources([source], prompts_yaml)
    except FieldError as e:  # the prompt set the message would point at is not written yet
        raise UserError(
            f"--prompts-file {e.where}: {e.problem}; pass --field NAME, the field or column "
            "that holds the prompts"
        ) from None
    return loaded


def _scalar(value: str) -> str:
    """A one-line YAML scalar, quoted only when it must be."""
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()
    )


def read_system_prompt(path: str | None, stdin_text: str | None) -> str | None:
    """The system prompt from `--system-prompt-file` (`-`: stdin), or piped stdin."""
    if path is None:
        return stdin_text
    if path == "-":
        text = stdin_text
    else:
        text = read_text(Path(path).expanduser(), f"--system-prompt-file {path}")
    if not (text or "").strip():  # asked for a prompt: a placeholder would hide the mistake
        if path == "-":
            raise UserError("--system-prompt-file -: stdin was empty; pipe the system prompt in")
        raise UserError(f"--system-prompt-file {path}: empty; write the system prompt in it")
    return text


def add_source(prompt_set_file: Path, source: Path, heldout: float | None = 0.1) -> str:
    """List `source` under `sources:` of a prompt set file, keeping its comments: appended as
    a new top-level key when the file has none (else the user is told what to add). Returns
    what was done, for the user."""
    from promptdistill.core.yamlio import read_yaml

    rel = os.path.relpath(source.resolve(), prompt_set_file.resolve().parent)
    data, _ = read_yaml(prompt_set_file)
    listed = data.get("sources") if isinstance(data, dict) else None
    entry = f"  - path: {_scalar(rel)}\n" + (f"    heldout: {heldout}\n" if heldout else "")
    if isinstance(listed, list):
        for s in listed:
            path = s.get("path") if isinstance(s, dict) else None
            if path and (prompt_set_file.resolve().parent / path).resolve() == source.resolve():
                return f"{prompt_set_file} already lists {rel} as a source"
        return f"add it to the sources of {prompt_set_file}:\n{entry.rstrip()}"
    text = prompt_set_file.read_text(encoding="utf-8")
    addition = (
        "\n# teacher-written prompts (promptdistill prompts generate); a share held out for eval\n"
        f"sources:\n{entry}"
    )
    atomic_write_text(prompt_set_file, text.rstrip("\n") + "\n" + addition)
    return f"listed {rel} as a source of {prompt_set_file}"
