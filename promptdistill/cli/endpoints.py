"""`--base-url`, repeated or a file of URLs: the teacher's endpoints (issue #15).

--base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1
--base-url replicas.txt        # one endpoint per line: `URL` or `URL N` (N: its own
                               # concurrency); blank lines and `# comments` are skipped
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from promptdistill.clients.base_url import normalize_base_url
from promptdistill.core.errors import UserError
from promptdistill.core.redact import redact_url

BaseUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (a bare host gets /v1 "
        "added). Repeat it, or pass a file of URLs (`URL [concurrency]` per line), for several "
        "replicas of the same model. Leave out to start the embedded local teacher.",
    ),
]


def parse_base_urls(values: list[str] | None) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(the first URL, every endpoint as config `endpoints`); the list is None for a single URL
    with no concurrency of its own, so a one-endpoint config stays as it always was."""
    if not values:
        return None, None
    found: list[tuple[str, int | None, str]] = []  # url, concurrency, where it was given
    for value in values:
        if value.startswith(("http://", "https://")) or not Path(value).is_file():
            try:
                normalize_base_url(value)
            except UserError as e:
                if "://" in value:
                    raise
                raise UserError(f"{e}, or a file of URLs (there is no file {value})") from None
            found.append((value, None, "--base-url"))
        else:
            found += _read_file(Path(value))
    seen: dict[str, str] = {}
    for url, _, where in found:
        key = normalize_base_url(url)
        if key in seen:
            raise UserError(f"{where}: {redact_url(key)} is listed twice (also in {seen[key]})")
        seen[key] = where
    if len(found) == 1 and found[0][1] is None:
        return found[0][0], None
    return found[0][0], [{"base_url": url, "concurrency": n} for url, n, _ in found]


def _read_file(path: Path) -> list[tuple[str, int | None, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--base-url {path}: cannot read it as a list of URLs ({e})") from None
    out: list[tuple[str, int | None, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        where = f"{path}:{number}"
        if len(parts) > 2 or (len(parts) == 2 and not (parts[1].isdigit() and int(parts[1]) > 0)):
            raise UserError(
                f"{where}: expected `URL` or `URL N` (N: requests in flight), got {line.strip()!r}"
            )
        try:
            normalize_base_url(parts[0])
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        out.append((parts[0], int(parts[1]) if len(parts) == 2 else None, where))
    if not out:
        raise UserError(f"--base-url {path}: the file lists no URL; put one per line")
    return out
