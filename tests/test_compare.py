"""`promptdistill compare` (issue #7), end to end: the real CLI as a subprocess, the fake
OpenAI-compatible server as the teacher, a tiny student with a LoRA adapter built here.

- scripts: `--prompt` and piped stdin print plain text (teacher first) or JSON lines;
- a real terminal, driven through tmux (send-keys, capture-pane): both panels fill, a narrow
  terminal stacks them, Ctrl-C stops an answer and the REPL lives on, /quit exits, and an
  endpoint error shows in the teacher's panel while the student still answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from fake_openai import Fault, start_fake_server
from fixtures_openai import TINY_SYSTEM, cli_env, write_persona

from promptdistill.core.config import SampleConfig, SamplingParams, TeacherConfig
from promptdistill.core.io import read_jsonl
from promptdistill.core.rundir import RunDir

TIMEOUT_S = 120


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model directory and a LoRA adapter for it (random B, so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny import make_tiny_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("student")
    model_dir = make_tiny_model(root / "tiny")

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(str(root / "adapter"))
    return model_dir, root / "adapter"


def make_run(
    root: Path,
    student: tuple[Path, Path],
    base_url: str | None,
    max_tokens: int = 12,
    temperature: float = 0.7,
) -> Path:
    """A run directory as `sample` and `train` leave it: config.yaml and adapter/. `base_url`
    None: the embedded teacher, the student's own base model."""
    model_dir, adapter = student
    persona = write_persona(root / "data")
    run = RunDir(root / "run").create()
    shutil.copytree(adapter, run.file("adapter"))
    sample = SampleConfig(
        persona=str(persona),
        n=4,
        sampling=SamplingParams(temperature=temperature, top_p=0.9, max_tokens=max_tokens, seed=1),
        teacher=TeacherConfig(
            base_url=base_url, model="fake-teacher" if base_url else str(model_dir)
        ),
    )
    run.save_stage_config("sample", sample.model_dump(mode="json"))
    run.save_stage_config("train", {"student": {"model": str(model_dir), "dtype": "fp32"}})
    return run.path


def compare(
    run: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptdistill", "compare", str(run), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cli_env(PROMPTDISTILL_HOME=str(run.parent / "home"), **env),
        timeout=TIMEOUT_S,
    )


# --------------------------------------------------------------------------- scripts


@pytest.mark.slow  # starts the CLI, which imports torch (~5 s)
def test_prompt_prints_teacher_then_student(tmp_path: Path, student: tuple[Path, Path]) -> None:
    with start_fake_server() as server:
        run = make_run(tmp_path, student, server.base_url)
        proc = compare(run, "--prompt", "Who are you?")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("[teacher]\nanswer to: Who are you?")
    student_part = out.split("[student]\n")[1]
    assert student_part.strip(), "the student answered nothing"
    # numbers for both sides go to stderr, with the prompt saving on the student's line
    assert "teacher: ttft" in proc.stderr and "student: ttft" in proc.stderr
    assert "vs teacher)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert server.asked["Who are you?"] == 1


@pytest.mark.slow  # starts the CLI, which imports torch (~5 s)
def test_the_embedded_teacher_answers_in_process(
    tmp_path: Path, student: tuple[Path, Path]
) -> None:
    # no server: the teacher is the student's base model given the system prompt, in process
    run = make_run(tmp_path, student, None, temperature=0.0)
    proc = compare(run, "--json", stdin="Who are you?\nAnd then?\n/base\nThird\n")
    assert proc.returncode == 0, proc.stderr
    assert "starting the local teacher" not in proc.stderr and "Traceback" not in proc.stderr
    records = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["teacher"]["tokens"] > 0 and r["teacher"]["error"] is None
        assert r["teacher"]["prompt_tokens_exact"]
    # the system prompt is in the teacher's prompt, not in the student's
    assert records[0]["teacher"]["prompt_tokens"] > records[0]["student"]["prompt_tokens"]
    assert records[1]["teacher"]["earlier_turns"] == 1
    # /base joins with the same weights as the teacher (one copy), without the prompt
    assert records[2]["base"]["tokens"] > 0 and records[2]["base"]["error"] is None


@pytest.mark.slow  # starts the CLI, which imports torch (~5 s)
def test_piped_stdin_json_history_save_and_base(tmp_path: Path, student: tuple[Path, Path]) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-test-right-key-1234\n")
    with start_fake_server(api_key="sk-test-right-key-1234") as server:
        run = make_run(tmp_path, student, server.base_url)
        script = "first question\n/temp 0\n/seed 5\nsecond question\n/save\n/base\nthird one\n"
        proc = compare(run, "--json", "--api-key-file", str(key_file), stdin=script)
        auth = server.last_headers.get("Authorization")
    assert proc.returncode == 0, proc.stderr
    records = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["first question", "second question", "third one"]
    first, second, third = records
    assert first["teacher"]["text"] == "answer to: first question"
    assert first["student"]["text"] and first["student"]["tokens"] > 0
    # the fake server streams no usage: the teacher's prompt is counted with the student's
    # tokenizer, system prompt included, and marked as an estimate
    assert first["teacher"]["prompt_tokens"] > 0 and not first["teacher"]["prompt_tokens_exact"]
    assert first["student"]["prompt_tokens"] > 0 and first["student"]["prompt_tokens_exact"]
    # multi-turn: each side saw its own earlier turns; /temp and /seed applied
    assert second["turn"] == 2 and second["teacher"]["earlier_turns"] == 1
    assert second["student"]["earlier_turns"] == 1
    assert second["sampling"]["temperature"] == 0.0 and second["sampling"]["seed"] == 5
    # /base added the third column, joining the conversation from there
    assert "base" not in second
    assert third["base"]["error"] is None and third["base"]["tokens"] > 0
    assert third["base"]["earlier_turns"] == 0 and third["student"]["earlier_turns"] == 2
    assert auth == "Bearer sk-test-right-key-1234"
    assert "sk-test-right-key" not in proc.stdout + proc.stderr
    saved = list(read_jsonl(run / "compare.jsonl"))
    assert len(saved) == 1 and saved[0]["prompt"] == "second question"
    assert saved[0]["student"]["text"] == second["student"]["text"]
    assert "sk-test-right-key" not in (run / "compare.jsonl").read_text()


@pytest.mark.slow  # starts the CLI, which imports torch (~5 s)
def test_teacher_error_shows_and_student_still_answers(
    tmp_path: Path, student: tuple[Path, Path]
) -> None:
    with start_fake_server(api_key="sk-server-key-0000") as server:
        run = make_run(tmp_path, student, server.base_url)
        proc = compare(
            run, "--prompt", "hello", "--api-key-env", "PD_TEST_KEY", PD_TEST_KEY="sk-wrong-9876"
        )
    assert proc.returncode == 1  # a script can tell that a side failed
    assert "teacher: error:" in proc.stderr and "HTTP 401" in proc.stderr
    assert "sk-wrong-9876" not in proc.stdout + proc.stderr
    student_text = proc.stdout.split("[student]\n")[1]
    assert student_text.strip(), "the student must answer even though the teacher failed"


# --------------------------------------------------------------------------- a real terminal


class Tmux:
    """One tmux server of our own (its own socket) running `compare` in a fixed-size window."""

    def __init__(self, root: Path, command: list[str], env: dict[str, str], width: int) -> None:
        self.socket = f"pd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        script = root / "session.sh"
        # COLUMNS/LINES from the caller would override the window's real size
        exports = "unset COLUMNS LINES\n" + "".join(
            f"export {k}={_sh(v)}\n" for k, v in env.items()
        )
        script.write_text(
            f"{exports}{' '.join(_sh(c) for c in command)}\n"
            'echo "compare exited with $?"\nsleep 600\n'
        )
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", "50", f"bash {script}")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def type_line(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        self.send("Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t", "-S", "-200")

    def wait_for(self, ok: Callable[[str], bool], what: str, timeout: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if ok(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.screen()}")

    def wait_prompt(self, after: str) -> str:
        """Wait until the REPL is back at its `>` prompt with `after` above it."""
        return self.wait_for(
            lambda s: after in s and _lines(s)[-1] == ">", f"the prompt after {after!r}"
        )

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def _sh(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _lines(screen: str) -> list[str]:
    return [line.rstrip() for line in screen.splitlines() if line.strip()]


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Tmux]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux): the terminal tests need it")
    sessions: list[Tmux] = []

    def open_terminal(run: Path, *args: str, width: int = 160) -> Tmux:
        command = [sys.executable, "-m", "promptdistill", "compare", str(run), *args]
        env = {"PROMPTDISTILL_HOME": str(tmp_path / "home"), "TERM": "xterm-256color"}
        env |= {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME")}
        tmux = Tmux(tmp_path, command, env, width)
        sessions.append(tmux)
        return tmux

    yield open_terminal
    for t in sessions:
        t.close()


@pytest.mark.slow  # starts the CLI, which imports torch (~5 s)
def test_terminal_side_by_side_ctrl_c_and_quit(
    tmp_path: Path, student: tuple[Path, Path], terminal: Callable[..., Tmux]
) -> None:
    # a slow teacher (0.15 s a word) and, after /max, a long answer on both sides
    with start_fake_server(stream_delay=0.15, answer_words=80) as server:
        run = make_run(tmp_path, student, server.base_url, max_tokens=6)
        tty = terminal(run)
        tty.wait_prompt("/help for commands")
        tty.type_line("Who are you?")
        screen = tty.wait_prompt("answer to: Who are you?")
        lines = _lines(screen)
        titles = next(i for i, line in enumerate(lines) if "teacher ·" in line)
        assert "student ·" in lines[titles], "the panels should sit side by side"
        first_row = lines[titles + 1]
        assert "answer to: Who are you?" in first_row
        right = first_row.split("│ │", 1)[1].strip(" │")
        assert right and "waiting" not in right, "the student's panel is empty"
        assert sum("tok/s" in line for line in lines) == 1  # both stats on one row
        assert "vs teacher)" in screen

        # Ctrl-C in the middle of both answers: both stop, the prompt returns, the REPL lives on
        tty.type_line("/max 4000")
        tty.type_line("/temp 0")
        tty.type_line("Tell me a long story")
        tty.wait_for(
            lambda s: "answer to: Tell me a long story w0" in s, "the teacher to start streaming"
        )
        tty.send("C-c")
        screen = tty.wait_prompt("not kept in the conversation")
        story = screen[screen.rindex("> Tell me a long story") :]
        assert story.count("stopped ─╯") == 2, "both answers should have been cut short"
        tty.type_line("/system")
        tty.wait_prompt(TINY_SYSTEM)
        tty.type_line("/quit")
        tty.wait_for(lambda s: "compare exited with 0" in s, "the REPL to exit")
    assert server.asked["Tell me a long story"] == 1
    # readline history survives the session, for the next one
    history = (tmp_path / "home" / "compare_history").read_text()
    assert "Who are you?" in history and "/max 4000" in history


@pytest.mark.slow  # starts the CLI, which imports torch (~5 s)
def test_terminal_narrow_stacks_and_shows_endpoint_error(
    tmp_path: Path, student: tuple[Path, Path], terminal: Callable[..., Tmux]
) -> None:
    faults = [Fault("status", status=500, match="boom", message="the teacher fell over")]
    with start_fake_server(faults=faults) as server:
        run = make_run(tmp_path, student, server.base_url)
        tty = terminal(run, width=80)
        tty.wait_prompt("/help for commands")
        tty.type_line("Who are you?")
        lines = _lines(tty.wait_prompt("answer to: Who are you?"))
        teacher = next(i for i, line in enumerate(lines) if "teacher ·" in line)
        student_row = next(i for i, line in enumerate(lines) if "student ·" in line)
        assert teacher < student_row, "on a narrow terminal the teacher's panel comes first"
        assert "student ·" not in lines[teacher]
        assert "answer to: Who are you?" in lines[teacher + 1]
        assert sum("tok/s" in line for line in lines) == 2  # one stats block per panel

        tty.type_line("boom now")
        screen = tty.wait_prompt("the teacher fell over")
        assert "answered HTTP" in screen and "500: the teacher fell over" in screen, screen
        after = screen[screen.rindex("boom now") :]
        student_block = after[after.index("student ·") :]
        assert " tok · prompt" in student_block and "waiting" not in student_block
        tty.send("C-d")
        tty.wait_for(lambda s: "compare exited with 0" in s, "Ctrl-D to exit")


# --------------------------------------------------------------------------- in process (fast)


def test_run_without_sample_or_adapter_is_a_one_line_user_error(tmp_path: Path) -> None:
    from promptdistill.compare.session import resolve
    from promptdistill.core.config import CompareConfig
    from promptdistill.core.errors import UserError

    run = RunDir(tmp_path / "run").create()
    with pytest.raises(UserError, match="promptdistill sample"):
        resolve(run, CompareConfig())
    sample = SampleConfig(persona="beethoven", n=1, teacher=TeacherConfig(base_url="http://x/v1"))
    run.save_stage_config("sample", sample.model_dump(mode="json"))
    with pytest.raises(UserError, match="promptdistill train"):
        resolve(run, CompareConfig())


def test_flags_override_the_recorded_teacher_and_sampling(
    tmp_path: Path, student: tuple[Path, Path]
) -> None:
    from promptdistill.compare.session import resolve
    from promptdistill.core.config import CompareConfig

    run = RunDir(make_run(tmp_path, student, "http://127.0.0.1:9/v1", max_tokens=12))
    r = resolve(run, CompareConfig(base_url="http://127.0.0.1:8/v1", model="m", max_tokens=3))
    assert r.sample.teacher.base_url == "http://127.0.0.1:8/v1" and r.sample.teacher.model == "m"
    assert r.sampling.max_tokens == 3 and r.sampling.temperature == 0.7  # the rest as recorded
    assert r.student.model == str(student[0]) and r.student.dtype == "fp32"


def _answers() -> list:
    from promptdistill.compare.chat import Answer

    teacher = Answer("teacher", "big-model @ host · system prompt", text="I am Ludwig.")
    student_ = Answer("student", "tiny + adapter · no prompt", text="I am Ludwig too.")
    for a, prompt in ((teacher, 712), (student_, 62)):
        a.started, a.first_token_at, a.finished_at = 0.0, 0.25, 2.25
        a.tokens, a.prompt_tokens = 41, prompt
    return [teacher, student_]


def test_stats_show_time_tokens_and_the_prompt_saving() -> None:
    from promptdistill.compare.view import stats_lines

    answers = _answers()
    assert stats_lines(answers[0], answers) == (
        "ttft 0.25 s · total 2.25 s · 20.0 tok/s",
        "41 tok · prompt 712 tok",
    )
    assert stats_lines(answers[1], answers)[1] == "41 tok · prompt 62 tok (−650 vs teacher)"


@pytest.mark.parametrize("width, side_by_side", [(140, True), (99, False)])
def test_board_is_side_by_side_when_wide_and_stacked_when_narrow(
    width: int, side_by_side: bool
) -> None:
    from rich.console import Console

    from promptdistill.compare.view import Board

    console = Console(width=width, record=True, color_system=None)
    console.print(Board(_answers()))
    lines = console.export_text().splitlines()
    titles = [i for i, line in enumerate(lines) if "teacher ·" in line or "student ·" in line]
    assert len(titles) == (1 if side_by_side else 2)
    assert all(len(line) <= width for line in lines)
