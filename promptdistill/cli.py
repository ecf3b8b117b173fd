"""The `promptdistill` command line: parse flags, build config models, call the library.

Keep this file thin. Heavy imports (torch, transformers) happen inside the commands that need
them, so `promptdistill sample` starts in a fraction of a second.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from promptdistill.errors import UserError

app = typer.Typer(
    help="Distill a persona's long system prompt into a small local student model.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
teacher_app = typer.Typer(help="Run the embedded local teacher.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")


def _console() -> Console:
    return Console(highlight=False)


# --------------------------------------------------------------------------- personas & prompts


@app.command()
def personas(
    tokenizer: Annotated[
        str, typer.Option(help="Model whose tokenizer counts the system-prompt tokens.")
    ] = "smollm2-135m",
) -> None:
    """List the personas with their system prompt's token count."""
    from promptdistill.personas import load_all_personas
    from promptdistill.tokens import count_tokens

    loaded = load_all_personas()
    table = Table("persona", "description", "prompt sets", "system tokens", "words")
    for p in loaded:
        table.add_row(
            p.name,
            p.persona.description,
            ", ".join(p.persona.prompt_sets),
            str(count_tokens(p.persona.system_prompt, tokenizer)),
            str(len(p.persona.system_prompt.split())),
        )
    _console().print(table)


@app.command()
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


# --------------------------------------------------------------------------- later stages
# sample (issue #3) ---------------------------------------------------------------------------

# teacher serve (issue #4) --------------------------------------------------------------------

# train, export (issue #5) --------------------------------------------------------------------

# eval (issue #6) -----------------------------------------------------------------------------

# compare (issue #7) --------------------------------------------------------------------------

# run, runs (issue #8) ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point: every UserError becomes one line on stderr and a non-zero exit."""
    try:
        app(args=argv, standalone_mode=False)
    except UserError as e:
        _print_error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        Console(stderr=True).print("aborted")
        return 130
    except typer.TyperException as e:  # bad flags and arguments, raised by typer's click
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        command = " ".join(["promptdistill", *(argv if argv is not None else sys.argv[1:])[:1]])
        _print_error(f"{message} (see `{command} --help`)")
        return int(getattr(e, "exit_code", 2))
    return 0


def _print_error(message: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        "[bold red]error:[/] " + escape(" ".join(message.split())), markup=True
    )


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
