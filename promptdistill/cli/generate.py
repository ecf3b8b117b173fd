"""`promptdistill prompts generate PERSONA -n N`: the teacher writes user prompts (issue #14)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from promptdistill.cli.common import DataDir, stdout
from promptdistill.core.errors import UserError


def prompts_generate(
    persona: Annotated[str, typer.Argument(help="Persona name or path to its .yaml file.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Distinct prompts to write.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="JSONL file to write (default: PROMPTSET-generated.jsonl beside the persona's "
            "prompt set, or prompts/ under --data-dir or here for a shipped one)."
        ),
    ] = None,
    topics: Annotated[
        list[str] | None,
        typer.Option(
            help="What the prompts are about (repeat or comma-separate); default: "
            "the prompt set's categories."
        ),
    ] = None,  # fmt: skip
    per_request: Annotated[int, typer.Option(min=1, max=50, help="Prompts per request.")] = 8,
    threshold: Annotated[
        float,
        typer.Option(min=0.01, max=1.0, help="Near duplicate at this MiniLM cosine similarity."),
    ] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed of the topics and styles asked for.")] = 0,
    max_requests: Annotated[
        int | None, typer.Option(min=1, help="Requests at most (default: 3x what -n needs).")
    ] = None,
    add: Annotated[
        bool, typer.Option("--add/--no-add", help="List OUT as a source of the prompt set.")
    ] = True,
    base_url: Annotated[
        str | None, typer.Option(help="Teacher endpoint; leave out for the local teacher.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Teacher model (required with --base-url).")
    ] = None,  # noqa: E501
    api_key_env: Annotated[
        str, typer.Option(help="Env var holding the API key.")
    ] = "OPENAI_API_KEY",  # noqa: E501
    api_key_file: Annotated[str | None, typer.Option(help="File holding the API key.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at most.")] = 16,
    rpm: Annotated[float | None, typer.Option(min=0.001, help="Requests per minute.")] = None,
    tpm: Annotated[float | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds per request.")] = 120.0,
    temperature: Annotated[
        float, typer.Option(min=0.0, max=2.0, help="Teacher temperature.")
    ] = 1.0,  # noqa: E501
    max_tokens: Annotated[int, typer.Option(min=16, help="Reply length cap per request.")] = 640,
    data_dir: DataDir = None,
    log_every: Annotated[float, typer.Option(help="Seconds between progress lines.")] = 5.0,
) -> None:
    """Have the teacher write N distinct user prompts for PERSONA into a prompt file.

    Seeded by the prompt set's categories (or --topics), with varied length, tone and intent;
    exact and near duplicates (MiniLM embeddings) are dropped. Rerun the same command to resume.
    """
    from promptdistill.core.config import PromptWriteConfig
    from promptdistill.core.merge import validate
    from promptdistill.models.embed import Embedder
    from promptdistill.personas import data_roots, load_persona
    from promptdistill.sampling.userprompts import write_prompts

    if base_url is not None and model is None:
        raise UserError("--model is required with --base-url (the teacher model's name)")
    loaded = load_persona(persona, data_roots(data_dir))
    cfg = validate(PromptWriteConfig, {
        "persona": persona, "n": n, "topics": _split(topics), "per_request": per_request,
        "threshold": threshold, "seed": seed, "max_requests": max_requests,
        "data_dir": str(data_dir.resolve()) if data_dir else None,
        "sampling": {"temperature": temperature, "top_p": loaded.persona.sampling.top_p,
                     "max_tokens": max_tokens, "seed": loaded.persona.sampling.seed},
        "teacher": {"base_url": base_url, "model": model or "smollm2-135m",
                    "api_key_env": api_key_env, "api_key_file": api_key_file,
                    "concurrency": concurrency, "rpm": rpm, "tpm": tpm, "timeout_s": timeout},
    })  # fmt: skip
    target = out or _default_out(loaded, data_dir)
    console = stdout()
    embedder: list[Any] = []

    def embed(texts: list[str]) -> Any:
        if not embedder:
            embedder.append(Embedder())
        return embedder[0].encode(texts)

    s = write_prompts(cfg, loaded, target, console, embed, log_every_s=log_every)
    console.print(
        f"{s.written} of {s.requested} prompts written to {s.out} ({s.requests} requests, "
        f"{s.candidates} messages parsed, {s.exact_duplicates} exact and {s.near_duplicates} "
        f"near duplicates dropped; replies kept in {s.replies})",
        soft_wrap=True,
    )
    if s.prompts:
        console.print(_diversity_table(loaded, s.prompts, seed, embed))
    again = shlex.join(["promptdistill", *sys.argv[1:]])
    if s.interrupted:
        console.print(f"interrupted; every reply is kept. Resume with: {again}", soft_wrap=True)
        raise typer.Exit(130)
    if s.prompts and add:
        _add_to_prompt_set(loaded, target, console)
    if s.written < s.requested:
        raise UserError(
            f"only {s.written} distinct prompts after {s.requests} requests (--max-requests); "
            "rerun with a higher --max-requests, more --topics, a higher --temperature or a "
            "higher --threshold",
            exit_code=1,
        )


def _split(topics: list[str] | None) -> list[str]:
    return [t.strip() for group in topics or [] for t in group.split(",") if t.strip()]


def _user_owned(path: Path) -> bool:
    from promptdistill.personas import shipped_root

    return not path.resolve().is_relative_to(shipped_root().resolve())


def _default_out(loaded: Any, data_dir: Path | None) -> Path:
    name = loaded.persona.prompt_sets[0]
    set_file = loaded.prompt_set_paths[name]
    if _user_owned(set_file):
        return set_file.parent / f"{name}-generated.jsonl"
    return (data_dir or Path.cwd()) / "prompts" / f"{name}-generated.jsonl"


def _add_to_prompt_set(loaded: Any, target: Path, console: Any) -> None:
    from promptdistill.scaffold import add_source

    set_file = loaded.prompt_set_paths[loaded.persona.prompt_sets[0]]
    if not _user_owned(set_file):
        console.print(
            f"{set_file} is a shipped prompt set; to use the prompts, list {target} under "
            "'sources:' of a prompt set of your own (promptdistill init NAME --prompts-file "
            f"{target} makes one)",
            soft_wrap=True,
        )
        return
    console.print(add_source(set_file, target), soft_wrap=True)


def _diversity_table(loaded: Any, prompts: list[str], seed: int, embed: Any) -> Table:
    from promptdistill.sampling.userprompts import diversity, template_baseline

    table = Table(title=f"diversity of {len(prompts)} prompts", title_justify="left")
    for col in ("prompts", "n", "distinct-2 (higher: more varied)",
                "mean pairwise cosine (lower: more varied)"):  # fmt: skip
        table.add_column(col, justify="left" if col == "prompts" else "right")
    rows = [("teacher-written", diversity(prompts, embed))]
    baseline = template_baseline(loaded, len(prompts), seed)
    if baseline:
        rows.append(("template expansion", diversity(baseline, embed)))
    for name, d in rows:
        table.add_row(name, str(d["prompts"]), f"{d['distinct_2']:.3f}",
                      f"{d['mean_pairwise_cosine']:.3f}")  # fmt: skip
    return table
