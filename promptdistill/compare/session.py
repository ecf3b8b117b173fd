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

from promptdistill.clients.endpoint import Transport, normalize_base_url
from promptdistill.compare.chat import Answer, Chat, EndpointChat, LocalChat, answer_all
from promptdistill.compare.view import View
from promptdistill.core.config import CompareConfig, SampleConfig, SamplingParams, StudentConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import JsonlWriter
from promptdistill.core.merge import merge
from promptdistill.core.redact import redact_url
from promptdistill.core.rundir import RunDir
from promptdistill.models.chat import Message

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


@dataclass(kw_only=True)
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


@dataclass(kw_only=True)
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
        *,
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
        answers = [Answer(side=s.name, title=s.title) for s in sides]
        return Exchange(
            prompt=prompt,
            turn=self.turn,
            sides=sides,
            messages=messages,
            answers=answers,
            sampling=self.sampling,
        )

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
        path = self.run.compare_log
        with JsonlWriter(path) as out:
            out.write(self.record(self.last))
        view.info(f"saved turn {self.last.turn} to {path}")


# --------------------------------------------------------------------------- building a session


@dataclass(kw_only=True)
class Resolved:
    """What a session needs, read from the run and the flags before anything heavy loads."""

    sample: SampleConfig
    student: StudentConfig
    adapter: Path
    sampling: SamplingParams


def resolve(run: RunDir, cfg: CompareConfig) -> Resolved:
    """The run's recorded teacher and sampling, with the flags on top (core/merge.py)."""
    run.require()
    recorded = run.stage_config("sample")
    if recorded is None:
        raise UserError(
            f"{run.config_path} has no `sample` section: this run was never sampled; "
            "run `promptdistill sample` first"
        )
    flags = {
        "teacher": {
            "base_url": cfg.base_url,
            "model": cfg.model,
            "api_key_env": cfg.api_key_env,
            "api_key_file": cfg.api_key_file,
        },
        "sampling": {
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            "seed": cfg.seed,
        },
    }
    try:
        sample = SampleConfig.model_validate(merge(recorded, flags))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{run.config_path}: sample.{where}: {err['msg']}") from None
    if sample.teacher.base_url is not None:
        normalize_base_url(sample.teacher.base_url)  # a bad URL fails now, before any model loads
    adapter = run.require_adapter()
    student = run.trained_student()
    if cfg.quantize is not None:  # --quantize: the base in 4-bit or not, else as trained (#17)
        if cfg.quantize == "4bit" and student.quantize != "4bit":
            from promptdistill.models.quantize import check_4bit

            check_4bit(student.model)  # before the teacher is asked or anything printed
        student = student.model_copy(update={"quantize": cfg.quantize})
    return Resolved(sample=sample, student=student, adapter=adapter, sampling=sample.sampling)


def open_session(
    run: RunDir,
    cfg: CompareConfig,
    stack: contextlib.ExitStack,
    say: Callable[[str], None],
) -> CompareSession:
    """Resolve the run's configuration, start or reach the teacher, load the student.

    Everything that must be shut down (the local teacher, the event loop) goes on `stack`.
    """
    from promptdistill.clients.keys import key_source, read_api_key
    from promptdistill.personas import load_run_persona, teacher_system

    r = resolve(run, cfg)
    persona = load_run_persona(r.sample.persona, r.sample.data_dir)
    system_prompt = teacher_system(persona)  # with the persona's teacher instructions (#17)
    teacher_cfg = r.sample.teacher
    api_key = read_api_key(teacher_cfg, say) if teacher_cfg.base_url is not None else None

    say(f"loading the student ({r.student.model} + {r.adapter}) ...")
    import torch
    from transformers.utils import logging as hf_logging

    # progress bars and deprecation notes from loading would land between the panels
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_causal_lm, load_student, load_tokenizer

    torch.set_grad_enabled(False)
    renderer = Renderer(load_tokenizer(r.student.model))  # as training rendered
    q = r.student.quantize
    student_chat = LocalChat(
        load_student(r.student.model, r.adapter, r.student.dtype, quantize=q), renderer
    )
    student_chat.warm_up()
    student_name = Path(r.student.model).name

    bases: dict[tuple[str, str, str], Any] = {}  # one copy of the weights for teacher and /base

    def base_model(name: str, dtype: str, quantize: str) -> Any:
        if (name, dtype, quantize) not in bases:
            bases[(name, dtype, quantize)] = load_causal_lm(name, dtype, quantize=quantize)
        return bases[(name, dtype, quantize)]

    teacher_chat: Chat
    model = teacher_cfg.model
    if teacher_cfg.base_url is None:
        # the embedded teacher answers in process, as in `sample` (dtype auto, unquantised): a
        # base model given the system prompt, whose keys and values are run once; no server
        say(f"loading the local teacher ({model}) ...")
        same = model == r.student.model
        teacher_renderer = renderer if same else Renderer(load_tokenizer(model))
        weights = base_model(model, "auto", "none")
        teacher_chat = LocalChat(weights, teacher_renderer, system_prompt=system_prompt)
        teacher_chat.warm_up()
        where = "in process"
    else:
        where = urlsplit(redact_url(teacher_cfg.base_url)).netloc or redact_url(
            teacher_cfg.base_url
        )
        transport = Transport(
            teacher_cfg.base_url, api_key, concurrency=4, timeout_s=teacher_cfg.timeout_s,
            key_source=key_source(teacher_cfg) if api_key else None,
        )  # fmt: skip
        # an estimate when the endpoint sends no usage
        teacher_chat = EndpointChat(
            transport=transport, model=model, count_prompt=lambda m: len(renderer.prompt(m))
        )
    runner = stack.enter_context(asyncio.Runner())

    def load_base() -> Side:
        chat = LocalChat(base_model(r.student.model, r.student.dtype, q), renderer)
        chat.warm_up()
        return Side(
            name="base",
            model=r.student.model,
            title=f"{student_name} · no prompt, no adapter",
            chat=chat,
        )

    teacher_title = Path(model).name if model.startswith("/") else model
    session = CompareSession(
        run=run,
        persona=persona.name,
        system_prompt=system_prompt,
        teacher=Side(
            name="teacher",
            model=model,
            title=f"{teacher_title} @ {where} · system prompt",
            chat=teacher_chat,
            system_prompt=system_prompt,
        ),
        student=Side(
            name="student",
            model=f"{r.student.model} + {r.adapter}",
            title=f"{student_name} + adapter · no prompt",
            chat=student_chat,
        ),
        sampling=r.sampling,
        load_base=load_base,
        runner=runner,
    )
    stack.callback(session.close)
    if cfg.base:
        session.base, session.show_base = load_base(), True
    return session


# --------------------------------------------------------------------------- reading lines


def history_file() -> Path:
    from promptdistill.models.resolve import promptdistill_home

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
