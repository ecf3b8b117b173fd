"""`promptdistill personas`, `prompts` and `init`: what there is to distill, and a new persona."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from typer.core import TyperGroup

from promptdistill.cli.common import DataDir, stderr, stdout


def personas(
    tokenizer: Annotated[
        str, typer.Option(help="Model whose tokenizer counts the system-prompt tokens.")
    ] = "smollm2-135m",
    data_dir: DataDir = None,
) -> None:
    """List the personas with their system prompt's token count and where each file is.

    A persona file that does not load is listed as broken, with its error, and the others are
    listed as usual. A system prompt longer than the model's context is flagged."""
    from promptdistill.models.chat import Renderer
    from promptdistill.models.context import overlong_prompt
    from promptdistill.models.load import load_tokenizer
    from promptdistill.personas import data_roots, list_personas, shipped_root

    entries = list_personas(data_roots(data_dir))
    count = Renderer(load_tokenizer(tokenizer)).count
    shipped = shipped_root().resolve()
    # a name (to copy) and a count with its limit ("43891 > 8192") stay on one line however
    # narrow the terminal; the description and the rest wrap
    table = Table(
        Column("persona", no_wrap=True), "description", "prompt sets",
        Column("system tokens", no_wrap=True), "words", "file",
    )  # fmt: skip
    notes: list[str] = []
    for entry in entries:
        where = "shipped" if entry.path.resolve().is_relative_to(shipped) else str(entry.path)
        p = entry.loaded
        if p is None:
            table.add_row(
                entry.name, f"[red]broken:[/] {escape(entry.error or '')}", "", "", "", where
            )
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
            where,
        )
    stdout().print(table)
    for note in notes:
        stderr().print(note, soft_wrap=True)


class DefaultShow(TyperGroup):
    """`promptdistill prompts PERSONA ...` is `promptdistill prompts show PERSONA ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["show", *args]
        return super().parse_args(ctx, args)


def prompts_show(
    persona: Annotated[str, typer.Argument(help="Persona name or path to its .yaml file.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="How many prompts.")] = 20,
    seed: Annotated[int, typer.Option(help="Expansion seed.")] = 0,
    heldout: Annotated[bool, typer.Option(help="Show the fixed held-out prompts instead.")] = False,
    show_ids: Annotated[
        bool, typer.Option("--ids", help="Prefix each prompt with its id.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Preview the user prompts of a persona, one per line (the default of `prompts`)."""
    from promptdistill.personas import data_roots, expand_prompts, heldout_prompts, load_persona

    loaded = load_persona(persona, data_roots(data_dir))
    for name, sources in loaded.sources.items():
        for source in sources:  # on stderr, so that stdout stays one prompt per line
            stderr().print(f"prompt set {name}: {source.summary()}", soft_wrap=True)
    items = heldout_prompts(loaded)[:n] if heldout else expand_prompts(loaded, n, seed)
    out = sys.stdout
    for p in items:
        text = p.text.replace("\n", " ")
        out.write(f"{p.id}\t{text}\n" if show_ids else f"{text}\n")


def init(
    name: Annotated[str, typer.Argument(help="The new persona's name (letters, digits, -_.).")],
    system_prompt_file: Annotated[
        str | None,
        typer.Option(
            help="Text file holding the system prompt ('-': stdin; piped stdin is read too)."
        ),
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            help="Your users' prompts (.jsonl with prompt or messages, .csv/.tsv, .txt one per "
            "line, .parquet, or a save_to_disk folder): the prompt set's source."
        ),
    ] = None,
    field: Annotated[
        str | None,
        typer.Option(
            help="The field (JSONL, Parquet, dataset) or column (CSV, TSV) of --prompts-file "
            "that holds the prompts (default: prompt, else messages, else the only column)."
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="One-line description.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where to write personas/ and prompts/ (default: here).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write personas/NAME.yaml and a starter prompts/NAME.yaml, commented, ready to edit."""
    from promptdistill.scaffold import init_persona, read_system_prompt

    piped = None
    if system_prompt_file == "-" or (system_prompt_file is None and not sys.stdin.isatty()):
        piped = sys.stdin.read()
    text = read_system_prompt(system_prompt_file, piped)
    done = init_persona(
        name,
        data_dir or Path.cwd(),
        text,
        prompts_file,
        description=description,
        force=force,
        field=field,
    )
    say = stdout().print
    prompt = done.loaded.persona.system_prompt
    say(f"wrote {done.persona_file} (system prompt: {len(prompt.split())} words)", soft_wrap=True)
    say(f"wrote {done.prompts_file}", soft_wrap=True)
    if done.source_summary:
        say(f"  source {done.source_summary}", soft_wrap=True)
    hint: dict[str, Any] = {"data": f" --data-dir {data_dir}" if data_dir else ""}
    say(f"next: promptdistill prompts {name} -n 20{hint['data']}   (preview)", soft_wrap=True)
    say(f"      promptdistill run {name} --preset demo{hint['data']}   (sample, train, eval)",
        soft_wrap=True)  # fmt: skip
