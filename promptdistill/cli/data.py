"""`promptdistill personas` and `promptdistill prompts`: what there is to distill."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from promptdistill.cli.common import stdout


def personas(
    tokenizer: Annotated[
        str, typer.Option(help="Model whose tokenizer counts the system-prompt tokens.")
    ] = "smollm2-135m",
) -> None:
    """List the personas with their system prompt's token count."""
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_tokenizer
    from promptdistill.personas import load_all_personas

    loaded = load_all_personas()
    count = Renderer(load_tokenizer(tokenizer)).count
    table = Table("persona", "description", "prompt sets", "system tokens", "words")
    for p in loaded:
        table.add_row(
            p.name,
            p.persona.description,
            ", ".join(p.persona.prompt_sets),
            str(count(p.persona.system_prompt)),
            str(len(p.persona.system_prompt.split())),
        )
    stdout().print(table)


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
