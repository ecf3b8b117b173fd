"""`promptdistill teacher serve`: the embedded teacher as an OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from promptdistill.cli.common import stdout


def teacher_serve(
    model: Annotated[
        str, typer.Option(help="Model name (smollm2-135m), local model directory or hub id.")
    ] = "smollm2-135m",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    host: Annotated[
        str, typer.Option(help="Address to listen on (keep it loopback).")
    ] = "127.0.0.1",
    dtype: Annotated[
        str, typer.Option(help="auto (bf16 where the CPU has it, else fp32), bf16 or fp32.")
    ] = "auto",
    kv_cache_tokens: Annotated[
        int,
        typer.Option(min=0, help="KV-cache size in tokens; 0: transformers' own (60% of RAM)."),
    ] = 32768,
) -> None:
    """Serve the embedded teacher (transformers serve) until Ctrl-C, and say how to use it."""
    import shlex
    import signal
    import time

    from promptdistill.clients.local_server import running_local_teacher

    console = stdout()

    def say(msg: str) -> None:
        console.print(msg, soft_wrap=True)

    def stop_on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # `kill PID` stops the server as cleanly as Ctrl-C

    previous_sigterm = signal.signal(signal.SIGTERM, stop_on_sigterm)
    # Started in the background by a shell, we inherit SIGINT ignored; `kill -INT` must still work.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    say(f"starting the local teacher ({model}) on {host}:{port} ...")
    try:
        with running_local_teacher(
            model, port=port, host=host, log=say, dtype=dtype, kv_cache_tokens=kv_cache_tokens
        ) as teacher:
            example = shlex.join(
                ["promptdistill", "sample", "beethoven", "--run", "runs/beethoven", "-n", "1000"]
                + ["--base-url", teacher.base_url, "--model", teacher.model]
            )
            say(f"local teacher ready at {teacher.base_url}")
            say(f"  base URL: {teacher.base_url}")
            say(f"  model:    {teacher.model}")
            say(f"  (requests name `{teacher.model}`, or no model; /v1/models lists it)")
            say(f"  log:      {teacher.log_path}")
            say(f"use it with:\n  {example}")
            say("Ctrl-C stops it.")
            try:
                while teacher.alive():
                    time.sleep(0.5)
                teacher.check()  # it died on its own: say why
            except KeyboardInterrupt:
                say("stopping the local teacher ...")
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)
    say("local teacher stopped")
