"""`promptdistill personas` and `promptdistill prompts`: what there is to distill."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from promptdistill.cli.common import stderr, stdout


def personas(
    tokenizer: Annotated[
        str, typer.Option(help="Model whose tokenizer counts the system-prompt tokens.")
    ] = "smollm2-135m",
) -> None:
    """List the personas with their system prompt's token count.

    A persona file that does not load is listed as broken, with its error, and the others are
    listed as usual. A system prompt longer than the model's context is flagged."""
    from promptdistill.models.chat import Renderer
    from promptdistill.models.context import overlong_prompt
    from promptdistill.models.load import load_tokenizer
    from promptdistill.personas import list_personas

    entries = list_personas()
    count = Renderer(load_tokenizer(tokenizer)).count
    table = Table("persona", "description", "prompt sets", "system tokens", "words")
    notes: list[str] = []
    for entry in entries:
        p = entry.loaded
        if p is None:
            table.add_row(entry.name, f"[red]broken:[/] {escape(entry.error or '')}", "", "", "")
            notes.append(f"[yellow]warning:[/] persona '{entry.name}' is broken: "
                         f"{escape(entry.error or '')}")  # fmt: skip
            continue
        tokens = str(count(p.persona.system_prompt))
        if (over := overlong_prompt(p.persona.system_prompt, tokenizer, count)) is not None:
            tokens = f"[yellow]{over[0]} > {over[1]}[/]"
            notes.append(
                f"[yellow]warning:[/] the system prompt of persona '{p.name}' is {over[0]} "
                f"tokens, longer than the context of {tokenizer} ({over[1]} tokens): the local "
                "teacher, eval and kd cannot see all of it there"
            )
        table.add_row(
            p.name,
            p.persona.description,
            ", ".join(p.persona.prompt_sets),
            tokens,
            str(len(p.persona.system_prompt.split())),
        )
    stdout().print(table)
    for note in notes:
        stderr().print(note, soft_wrap=True)


def prompts(
    persona: Annotated[str, typer.Argument(help="Persona name or path to its .yaml file.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="How many prompts.")] = 20,
    seed: Annotated[int, typer.Option(help="Expansion seed.")] = 0,
    heldout: Annotated[bool, typer.Option(help="Show the fixed held-out prompts instead.")] = False,
    show_ids: Annotated[
        bool, typer.Option("--ids", help="Prefix each prompt with its id.")
    ] = False,
) -> None:
    """Preview the expanded user prompts of a persona, one per line."""
    from promptdistill.personas import expand_prompts, heldout_prompts, load_persona

    loaded = load_persona(persona)
    items = heldout_prompts(loaded)[:n] if heldout else expand_prompts(loaded, n, seed)
    out = sys.stdout
    for p in items:
        text = p.text.replace("\n", " ")
        out.write(f"{p.id}\t{text}\n" if show_ids else f"{text}\n")
