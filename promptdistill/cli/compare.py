"""`promptdistill compare`: teacher and student side by side."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from promptdistill.cli.common import QuantizeOption, quantize_flag, stdout


def compare(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="Run directory (after train).")],
    base_url: Annotated[
        str | None,
        typer.Option(help="Teacher endpoint (OpenAI-compatible). Default: the run's teacher."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Teacher model name.")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the teacher's API key.")
    ] = None,
    api_key_file: Annotated[
        str | None, typer.Option(help="File holding the teacher's API key.")
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            help="Ask this and print the answers (no REPL). Repeat for a multi-turn conversation."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per prompt instead of text.")
    ] = False,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, max=2.0, help="Default: the run's sampling.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Answer length cap. Default: the run's sampling.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed. Default: the run's.")] = None,
    base: Annotated[
        bool, typer.Option("--base", help="Also show the base model (no prompt, no adapter).")
    ] = False,
    quantize: QuantizeOption = None,
) -> None:
    """Ask the teacher (with the system prompt) and the student (without it) side by side.

    On a terminal this opens a REPL (/help lists its commands). With --prompt, or prompts piped
    on stdin one per line, it prints the answers as text (teacher first) or JSON lines (--json).
    """
    import contextlib

    from promptdistill.clients.endpoint import normalize_base_url
    from promptdistill.compare.session import open_session, repl, stream_reader, terminal_reader
    from promptdistill.compare.view import JsonView, PlainView, RichView, View
    from promptdistill.core.config import CompareConfig
    from promptdistill.core.merge import validate
    from promptdistill.core.rundir import RunDir

    if base_url is not None:
        normalize_base_url(base_url)
    cfg = validate(
        CompareConfig,
        {
            "base_url": base_url, "model": model, "api_key_env": api_key_env,
            "api_key_file": api_key_file, "temperature": temperature, "max_tokens": max_tokens,
            "seed": seed, "base": base, "quantize": quantize_flag(quantize),
        },
    )  # fmt: skip
    interactive = not prompt and sys.stdin.isatty()
    view: View
    if json_out:
        view = JsonView()
    elif interactive and sys.stdout.isatty():
        view = RichView(stdout())
    else:
        view = PlainView()
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(RunDir(run_dir).require().locked())  # it writes compare.jsonl
        session = open_session(run, cfg, stack, view.info)
        if prompt:
            read = stream_reader(prompt)
        elif interactive:
            read = terminal_reader(stack)
            view.info(session.banner())
        else:
            read = stream_reader()
        failed = repl(session, view, read, interactive)
    if failed and not interactive:
        raise typer.Exit(1)
