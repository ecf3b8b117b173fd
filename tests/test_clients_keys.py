"""API keys from a file or the environment (issue #16): a key file that is not one line of
text is one line of error, a key file others can read is warned about, and a refused key names
the file it came from. The key itself is never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_openai import start_fake_server
from fixtures_openai import cli_args, one_line_error, run_cli, write_persona

KEY = "sk-KEYFILE-TEST-0c93a1"


def _sample(tmp_path: Path, url: str, key_file: Path, **env: str) -> object:
    persona = write_persona(tmp_path / "data")
    args = cli_args(persona, tmp_path / "run", 3, url, "--no-heldout", "--api-key-file",
                    str(key_file))  # fmt: skip
    return run_cli(args, **env)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (f"{KEY}\nsk-second-key\n".encode(), "holds more than one line"),
        (b"sk-\xff\xfe-not-text", "not UTF-8 text"),
        (f"{KEY} extra".encode(), "a space or a control character"),
    ],
)
def test_a_key_file_that_is_not_one_key_is_one_line(
    tmp_path: Path, content: bytes, said: str
) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    result = _sample(tmp_path, "http://127.0.0.1:9/v1", key_file)
    line = one_line_error(result, 2)  # type: ignore[arg-type]
    assert f"--api-key-file {key_file}" in line and said in line, line
    assert KEY not in result.stdout + result.stderr  # type: ignore[attr-defined]
    assert not (tmp_path / "run").exists()


def test_a_readable_key_file_is_warned_about_and_a_401_names_it(tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    with start_fake_server(api_key="the-right-key") as server:
        result = _sample(tmp_path, server.base_url, key_file, OPENAI_API_KEY="sk-env-unused")
    line = one_line_error(result, 3)  # type: ignore[arg-type]
    assert "401" in line and f"the API key from --api-key-file {key_file} was refused" in line
    out = result.stdout  # type: ignore[attr-defined]
    assert f"--api-key-file {key_file} can be read by other users (mode 644)" in out
    assert f"chmod 600 {key_file}" in out
    assert KEY not in out + result.stderr  # type: ignore[attr-defined]
