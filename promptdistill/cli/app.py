"""The `promptdistill` command line: build the typer app, run it, and turn every `UserError`
into one line on stderr with a non-zero exit.

Each command (cli/data.py, sample.py, teacher.py, train.py, evaluate.py, compare.py,
pipeline.py) parses
its flags and calls one library function. Heavy imports (torch, transformers) happen inside the
commands that need them, so `promptdistill sample` starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import signal
import sys

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from promptdistill.cli import compare, data, evaluate, generate, pipeline, sample, teacher, train
from promptdistill.core.errors import UserError
from promptdistill.core.io import as_os_error, os_error
from promptdistill.core.redact import redact_auth


def build_app() -> typer.Typer:
    app = typer.Typer(
        help="Distill a persona's long system prompt into a small local student model.",
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    # in data-flow order, as `--help` lists them
    app.command()(data.init)
    app.command()(data.personas)
    prompts_app = typer.Typer(
        cls=data.DefaultShow,
        help="Preview a persona's user prompts (`prompts PERSONA`), or have the teacher write "
        "some (`prompts generate PERSONA -n N`).",
        no_args_is_help=True,
    )
    prompts_app.command("show")(data.prompts_show)
    prompts_app.command("generate")(generate.prompts_generate)
    app.add_typer(prompts_app, name="prompts")
    app.command()(sample.sample)
    app.command()(train.train)
    app.command()(train.export)
    app.command("eval")(evaluate.eval_command)
    app.command()(compare.compare)
    app.command("run")(pipeline.run_command)
    app.command()(pipeline.runs)
    teacher_app = typer.Typer(help="Run the embedded local teacher.", no_args_is_help=True)
    teacher_app.command("serve")(teacher.teacher_serve)
    app.add_typer(teacher_app, name="teacher")
    return app


def main(argv: list[str] | None = None) -> int:
    """Entry point: every UserError becomes one line on stderr and a non-zero exit."""
    # `kill` and `timeout` send SIGTERM: unwind like Ctrl-C does, so context managers stop the
    # local teacher subprocess and flush files instead of leaving a server running
    signal.signal(signal.SIGTERM, _terminate)
    # bitsandbytes (the optional `quantize` extra, imported by PEFT whenever it is installed)
    # warns at import on AVX512-BF16 CPUs that it cannot fetch an optional kernel from the hub;
    # its pure-torch path works, and the warning would only clutter every command's output
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        # standalone_mode=False: click *returns* the code of a `typer.Exit(code)` raised by a
        # command instead of raising it, so it must be passed on here
        rc = build_app()(args=argv, standalone_mode=False)
    except UserError as e:
        _print_error(str(e))
        return e.exit_code
    except ValidationError as e:  # a model built from flags somewhere without core.merge
        first = e.errors()[0]
        names = [p for p in first["loc"] if isinstance(p, str)]
        _print_error(f"--{(names[-1] if names else 'option').replace('_', '-')}: {first['msg']}")
        return 2
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
    except Exception as e:  # the last boundary: an OS error no stage converted (issue #16)
        found = as_os_error(e)  # also one a library wrapped (safetensors: "os error 28")
        if found is None:
            raise
        _print_error(str(os_error(found, action=None)))
        return 2
    return rc if isinstance(rc, int) else 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _print_error(message: str) -> None:
    # redact_auth: whatever an endpoint echoed, no Authorization value reaches the terminal
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        "[bold red]error:[/] " + escape(redact_auth(" ".join(message.split()))), markup=True
    )


def run() -> None:
    sys.exit(main())
