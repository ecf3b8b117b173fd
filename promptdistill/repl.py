"""`promptdistill compare RUN`: ask the teacher and the student the same thing, side by side.

Each prompt goes at the same time to
- the teacher, *with* the persona's system prompt, streamed from its OpenAI-compatible endpoint;
- the student (the run's LoRA adapter on its base model), locally, *without* the system prompt;
- optionally (`/base`) the bare base model, also without the prompt: what the student was
  before training.

`repl` is the whole loop, in the spirit of simonw/llm's chat loop: read a line, run a command or
ask every side, show the exchange. Everything else here is the state it works on
(`CompareSession`) and how that state is built from a run directory (`open_session`). Drawing
lives in compare_view.py, token streaming in generation.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from promptdistill.compare_view import View
from promptdistill.config import CompareConfig, SampleConfig, SamplingParams, StudentConfig
from promptdistill.errors import UserError
from promptdistill.generation import Answer, Chat, EndpointChat, LocalChat, Message, answer_all
from promptdistill.store import JsonlWriter, RunDir, redact_url
from promptdistill.teacher.transport import normalize_base_url

COMPARE_FILE = "compare.jsonl"
HELP = """\
type a prompt to ask every side at once; Ctrl-C stops the answers, Ctrl-D quits
/help        this list
/temp X      set the temperature (0 = greedy), e.g. /temp 0.7
/max N       set the maximum answer length in tokens
/seed N      set the seed (/seed off: a fresh one each time)
/base        show or hide a third column: the base model without the prompt
/system      show the persona's system prompt (what the teacher gets and the student does not)
/save        append the last exchange to RUN/compare.jsonl
/clear       start a new conversation
/quit        exit"""


# --------------------------------------------------------------------------- the loop


def repl(
    session: CompareSession, view: View, read_line: Callable[[], str], interactive: bool = True
) -> int:
    """Read, dispatch, ask every side at once, show. Returns how many exchanges had an error.

    Ctrl-C during an answer stops every side and, at a terminal, returns to the prompt; a
    script (`interactive=False`) is stopped altogether, as scripts expect.
    """
    failed = 0
    while True:
        try:
            line = read_line().strip()
        except EOFError:  # Ctrl-D, or the end of piped input
            return failed
        except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line, like a shell
            view.info("(Ctrl-D or /quit to exit)")
            continue
        if not line:
            continue
        if line.startswith("/"):
            if session.command(line, view) == "quit":
                return failed
            continue
        exchange = session.new_exchange(line)
        try:
            with view.streaming(exchange.answers):
                session.answer(exchange)
        except KeyboardInterrupt:  # the runner has cancelled both sides and waited for them
            if not interactive:
                raise
            exchange.stopped = True
        view.exchange(exchange.prompt, exchange.answers, session.record(exchange))
        if exchange.stopped:
            view.warn("stopped; this exchange is not kept in the conversation")
        else:
            session.keep(exchange)
        failed += any(a.error for a in exchange.answers)


# --------------------------------------------------------------------------- session state


@dataclass
class Side:
    name: str  # "teacher", "student", "base"
    model: str  # the model's name, for records
    title: str  # what the panel header says about it
    chat: Chat
    system_prompt: str | None = None  # only the teacher's
    history: list[Message] = field(default_factory=list)

    def messages(self, prompt: str) -> list[Message]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.history + [{"role": "user", "content": prompt}]


@dataclass
class Exchange:
    prompt: str
    turn: int
    sides: list[Side]
    messages: list[list[Message]]  # what each side is sent
    answers: list[Answer]
    sampling: SamplingParams
    time: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat("T", "seconds"))
    stopped: bool = False


class CompareSession:
    """The sides, their conversations, the sampling settings and the last exchange."""

    def __init__(
        self,
        run: RunDir,
        persona: str,
        system_prompt: str,
        teacher: Side,
        student: Side,
        sampling: SamplingParams,
        load_base: Callable[[], Side],
        runner: asyncio.Runner,
    ) -> None:
        self.run = run
        self.persona = persona
        self.system_prompt = system_prompt
        self.teacher = teacher
        self.student = student
        self.base: Side | None = None
        self.show_base = False
        self.sampling = sampling
        self._load_base = load_base
        self.runner = runner
        self.turn = 1
        self.last: Exchange | None = None

    def sides(self) -> list[Side]:
        shown = [self.teacher, self.student]
        return [*shown, self.base] if self.show_base and self.base is not None else shown

    # ------------------------------------------------------------------ asking

    def new_exchange(self, prompt: str) -> Exchange:
        sides = self.sides()
        messages = [s.messages(prompt) for s in sides]
        answers = [Answer(s.name, s.title) for s in sides]
        return Exchange(prompt, self.turn, sides, messages, answers, self.sampling)

    def answer(self, exchange: Exchange) -> None:
        """Every side at the same time. Ctrl-C makes the runner cancel them all (each waits for
        its generation to stop) and then raises KeyboardInterrupt here."""
        jobs = [
            (side.chat, messages, answer)
            for side, messages, answer in zip(
                exchange.sides, exchange.messages, exchange.answers, strict=True
            )
        ]
        self.runner.run(answer_all(jobs, exchange.sampling))

    def keep(self, exchange: Exchange) -> None:
        """Extend each side's own conversation with its own answer (not if it failed)."""
        for side, answer in zip(exchange.sides, exchange.answers, strict=True):
            if answer.error is None:
                side.history += [
                    {"role": "user", "content": exchange.prompt},
                    {"role": "assistant", "content": answer.text},
                ]
        self.turn += 1
        self.last = exchange

    def record(self, exchange: Exchange) -> dict[str, Any]:
        """One JSON object per exchange, for `--json` and `/save`."""
        rec: dict[str, Any] = {
            "time": exchange.time,
            "run": str(self.run.path),
            "persona": self.persona,
            "turn": exchange.turn,
            "prompt": exchange.prompt,
            "sampling": exchange.sampling.model_dump(),
        }
        for side, messages, answer in zip(
            exchange.sides, exchange.messages, exchange.answers, strict=True
        ):
            earlier = sum(m["role"] == "user" for m in messages) - 1
            rec[side.name] = {"model": side.model, **answer.record(), "earlier_turns": earlier}
        return rec

    def banner(self) -> str:
        s = self.sampling
        return (
            f"teacher: {self.teacher.title}  ·  student: {self.student.title}\n"
            f"persona {self.persona} · temperature {s.temperature} · max {s.max_tokens} tokens"
            f" · seed {s.seed}  ·  /help for commands, Ctrl-D to quit"
        )

    def close(self) -> None:
        if isinstance(self.teacher.chat, EndpointChat):
            with contextlib.suppress(Exception):
                self.runner.run(self.teacher.chat.close())

    # ------------------------------------------------------------------ commands

    def command(self, line: str, view: View) -> str | None:
        """Run one /command. Returns "quit" to leave the loop."""
        name, _, arg = line.partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name in ("/help", "/?"):
            view.block("commands", HELP)
        elif name == "/temp":
            self._set(view, "temperature", arg, float, "/temp 0.7")
        elif name == "/max":
            self._set(view, "max_tokens", arg, int, "/max 256")
        elif name == "/seed":
            if arg.lower() in ("off", "none"):
                self.sampling = self.sampling.model_copy(update={"seed": None})
                view.info("seed: off (a fresh one for each answer)")
            else:
                self._set(view, "seed", arg, int, "/seed 42")
        elif name == "/base":
            self._toggle_base(view)
        elif name == "/system":
            view.block(f"system prompt of {self.persona} (teacher only)", self.system_prompt)
        elif name == "/save":
            self._save(view)
        elif name == "/clear":
            for side in (self.teacher, self.student, self.base):
                if side is not None:
                    side.history = []
            self.turn, self.last = 1, None
            view.info("new conversation")
        else:
            view.warn(f"unknown command {name}; /help lists the commands")
        return None

    def _set(self, view: View, key: str, arg: str, kind: type, example: str) -> None:
        try:
            value = kind(arg)
            self.sampling = SamplingParams.model_validate(
                {**self.sampling.model_dump(), key: value}
            )
        except (ValueError, ValidationError) as e:
            reason = e.errors()[0]["msg"] if isinstance(e, ValidationError) else "not a number"
            view.warn(f"{key}: {arg!r} is not valid ({reason}); e.g. {example}")
            return
        view.info(f"{key}: {getattr(self.sampling, key)}")

    def _toggle_base(self, view: View) -> None:
        if self.show_base:
            self.show_base = False
            view.info("base model column hidden")
            return
        if self.base is None:
            view.info("loading the base model ...")
            self.base = self._load_base()
        self.show_base = True
        extra = " (it joins the conversation from here)" if self.student.history else ""
        view.info(f"base model column shown: {self.base.title}{extra}")

    def _save(self, view: View) -> None:
        if self.last is None:
            view.warn("nothing to save yet: ask something first")
            return
        path = self.run.file(COMPARE_FILE)
        with JsonlWriter(path) as out:
            out.write(self.record(self.last))
        view.info(f"saved turn {self.last.turn} to {path}")


# --------------------------------------------------------------------------- building a session


@dataclass
class Resolved:
    """What a session needs, read from the run and the flags before anything heavy loads."""

    sample: SampleConfig
    student: StudentConfig
    adapter: Path
    sampling: SamplingParams


def resolve(run: RunDir, cfg: CompareConfig) -> Resolved:
    run.require()
    recorded = run.stage_config("sample")
    if recorded is None:
        raise UserError(
            f"{run.config_path} has no `sample` section: this run was never sampled; "
            "run `promptdistill sample` first"
        )
    try:
        sample = SampleConfig.model_validate(recorded)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{run.config_path}: sample.{where}: {err['msg']}") from None
    teacher = sample.teacher.model_copy(
        update={
            k: v
            for k, v in dict(
                base_url=cfg.base_url,
                model=cfg.model,
                api_key_env=cfg.api_key_env,
                api_key_file=cfg.api_key_file,
            ).items()
            if v is not None
        }
    )
    if teacher.base_url is not None:
        normalize_base_url(teacher.base_url)  # a bad URL fails now, before any model loads
    sample = sample.model_copy(update={"teacher": teacher})
    sampling = sample.sampling.model_copy(
        update={
            k: v
            for k, v in dict(
                temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed
            ).items()
            if v is not None
        }
    )
    adapter = run.file("adapter")
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(
            f"{adapter} has no adapter_config.json: this run has no trained adapter yet; "
            "run `promptdistill train` first"
        )
    return Resolved(sample, _student_config(run, adapter), adapter, sampling)


def _student_config(run: RunDir, adapter: Path) -> StudentConfig:
    """The student as `train` recorded it; else the adapter's own base model."""
    train = run.stage_config("train") or {}
    student = train.get("student")
    if isinstance(student, dict):
        try:
            return StudentConfig.model_validate(student)
        except ValidationError as e:
            raise UserError(f"{run.config_path}: train.student: {e.errors()[0]['msg']}") from None
    import orjson

    base = orjson.loads((adapter / "adapter_config.json").read_bytes()).get(
        "base_model_name_or_path"
    )
    return StudentConfig(model=base) if base else StudentConfig()


def render_fn(tokenizer: Any) -> Callable[[Sequence[Message]], list[int]]:
    """Token ids of a conversation plus the assistant header, rendered by the very function
    training used (datums.py), so the student sees at inference what it saw in training."""
    from promptdistill.datums import _render

    def render(messages: Sequence[Message]) -> list[int]:
        return _render(tokenizer, list(messages), generation_prompt=True)

    return render


def open_session(
    run: RunDir,
    cfg: CompareConfig,
    stack: contextlib.ExitStack,
    say: Callable[[str], None],
) -> CompareSession:
    """Resolve the run's configuration, start or reach the teacher, load the student.

    Everything that must be shut down (the local teacher, the event loop) goes on `stack`.
    """
    from promptdistill.personas import load_persona

    r = resolve(run, cfg)
    persona = load_persona(r.sample.persona)
    system_prompt = persona.persona.system_prompt
    teacher_cfg = r.sample.teacher
    api_key = None
    if teacher_cfg.base_url is not None:
        from promptdistill.teacher.sample import read_api_key

        api_key = read_api_key(r.sample)

    say(f"loading the student ({r.student.model} + {r.adapter}) ...")
    import torch
    from transformers.utils import logging as hf_logging

    # progress bars and deprecation notes from loading would land between the panels
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    from promptdistill.datums import end_of_turn_ids
    from promptdistill.models import load_causal_lm, load_student, load_tokenizer

    torch.set_grad_enabled(False)
    tokenizer = load_tokenizer(r.student.model)
    render = render_fn(tokenizer)
    stop_ids = sorted(end_of_turn_ids(tokenizer))  # EOS and <|im_end|>, as training taught
    student_model = load_student(r.student.model, r.adapter, r.student.dtype)
    student_chat = LocalChat(student_model, tokenizer, render, stop_ids)
    student_chat.warm_up()
    student_name = Path(r.student.model).name

    if teacher_cfg.base_url is None:
        from promptdistill.teacher.local import running_local_teacher

        say(f"starting the local teacher ({teacher_cfg.model}) ...")
        local = stack.enter_context(running_local_teacher(teacher_cfg.model, log=say))
        base_url, model = local.base_url, local.model
        where = "local"
    else:
        base_url, model = teacher_cfg.base_url, teacher_cfg.model
        where = urlsplit(redact_url(base_url)).netloc or redact_url(base_url)

    def count_teacher_prompt(messages: Sequence[Message]) -> int:
        return len(render(messages))  # an estimate when the endpoint sends no usage

    teacher_chat = EndpointChat(
        base_url, model, api_key, teacher_cfg.timeout_s, count_prompt=count_teacher_prompt
    )
    runner = stack.enter_context(asyncio.Runner())

    def load_base() -> Side:
        base_model = load_causal_lm(r.student.model, r.student.dtype)
        chat = LocalChat(base_model, tokenizer, render, stop_ids)
        chat.warm_up()
        return Side("base", r.student.model, f"{student_name} · no prompt, no adapter", chat)

    session = CompareSession(
        run,
        persona.name,
        system_prompt,
        Side(
            "teacher",
            model,
            f"{Path(model).name if model.startswith('/') else model} @ {where} · system prompt",
            teacher_chat,
            system_prompt,
        ),
        Side(
            "student",
            f"{r.student.model} + {r.adapter}",
            f"{student_name} + adapter · no prompt",
            student_chat,
        ),
        r.sampling,
        load_base,
        runner,
    )
    stack.callback(session.close)
    if cfg.base:
        session.base, session.show_base = load_base(), True
    return session


# --------------------------------------------------------------------------- reading lines


def history_file() -> Path:
    from promptdistill.models import promptdistill_home

    return promptdistill_home() / "compare_history"


def terminal_reader(stack: contextlib.ExitStack, prompt: str = "> ") -> Callable[[], str]:
    """`input()` with GNU readline: line editing, and history kept across sessions."""
    import readline

    path = history_file()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(2000)

    def save() -> None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)

    stack.callback(save)
    return lambda: input(prompt)


def stream_reader(lines: Sequence[str] | None = None) -> Callable[[], str]:
    """Prompts from a list (`--prompt`) or one per line of piped stdin."""
    pending = list(lines) if lines is not None else None

    def read() -> str:
        if pending is not None:
            if not pending:
                raise EOFError
            return pending.pop(0)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read
