"""A real, non-editable install (issue #14): build the wheel, install it into a fresh venv,
and from an empty folder run `personas`, `prompts beethoven -n 3` and `init`: the shipped
personas travel inside the package.

Offline and quick: the wheel is built with --no-build-isolation (setuptools from this venv),
installed with --no-deps, and the fresh venv reaches the dependencies through a .pth line
naming this venv's site-packages (a plain path: no .pth inside it runs, so this checkout's
own editable install stays out of sight).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_a_wheel_install_has_the_shipped_personas(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROMPTDISTILL_DATA")}
    env["COLUMNS"] = "200"  # the personas table, unwrapped
    # built from a copy: setuptools writes build/ and *.egg-info/ into the tree it builds
    source = tmp_path / "source"
    shutil.copytree(REPO / "promptdistill", source / "promptdistill",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = [
        *pip,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
        str(source),
    ]
    run(build, tmp_path, env)
    (wheel,) = wheels.glob("promptdistill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "promptdistill/data/personas/beethoven.yaml" in names
    assert "promptdistill/data/prompts/beethoven.yaml" in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(run([str(python), "-c", code], tmp_path, env).stdout.strip())
    (purelib / "deps-from-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        tmp_path, env)  # fmt: skip

    empty = tmp_path / "empty"
    empty.mkdir()
    where = run(
        [str(python), "-c", "import promptdistill; print(promptdistill.__file__)"], empty, env
    )
    assert where.stdout.strip().startswith(str(purelib)), where.stdout  # the wheel, not the repo
    cli = str(venv / "bin" / "promptdistill")
    listed = run([cli, "personas"], empty, env).stdout
    assert all(n in listed for n in ("beethoven", "mathtutor", "nimbus-support")), listed
    assert "shipped" in listed
    prompts = run([cli, "prompts", "beethoven", "-n", "3"], empty, env).stdout.splitlines()
    assert len(prompts) == 3 and all(prompts)
    init = run([cli, "init", "mine"], empty, env).stdout
    assert "wrote" in init and (empty / "personas" / "mine.yaml").is_file()
    mine = run([cli, "prompts", "mine", "-n", "3"], empty, env).stdout.splitlines()
    assert len(mine) == 3
    assert sorted(p.name for p in empty.iterdir()) == ["personas", "prompts"]
