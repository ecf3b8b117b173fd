"""`promptdistill run --stream`: training starts while the teacher is still answering, trains
every training sample exactly once (across a Ctrl-C and a rerun too), and leaves a normal,
complete run; switching between streamed and epoch training redoes training, with a warning."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from fake_openai import FakeOpenAI, Fault, start_fake_server
from fixtures_openai import cli_env, write_persona
from tiny import make_tiny_model, write_samples

from promptdistill.core.config import TrainConfig
from promptdistill.datums.build import split_of
from promptdistill.personas import expand_prompts, load_persona
from promptdistill.training.loop import lr_at
from promptdistill.training.stream import SampleStream, SampleTail

# small batches, so that a few answers fill one; a cheap eval
RUN_YAML = """
train: {batch_tokens: 128, warmup: 0, lr: 0.02, lora_r: 4, save_every: 3, eval_every: 4}
eval: {max_new_tokens: 8, latency_requests: 0, classifier_train: 4, batch_size: 8}
"""


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "promptdistill", *args]


def _run(root: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli(args),
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(PROMPTDISTILL_DATA=str(root), COLUMNS="200"),
    )


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def _train_split_ids(run: Path) -> list[str]:
    """What an epoch must cover: every non-held-out sample in the training split."""
    return [
        r["id"]
        for r in _lines(run / "samples.jsonl")
        if r["split"] != "heldout" and split_of(r["id"], 0.1) == "train"
    ]


def _trained_ids(run: Path) -> list[str]:
    steps = [r for r in _lines(run / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    return [i for r in steps for i in r["ids"]]


def _prompts(root: Path, n: int) -> list[str]:
    """The training prompts in the order the sampler asks them."""
    persona = load_persona(str(root / "personas" / "tiny.yaml"))
    return [p.text for p in expand_prompts(persona, n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("stream")
    write_persona(root, "tiny", values=8, heldout=2)
    (root / "run.yaml").write_text(RUN_YAML)
    return root, make_tiny_model(root / "student"), root / "run.yaml"


def _args(run: Path, base_url: str, student: Path, config: Path, n: int) -> list[str]:
    return ["run", "tiny", "--run", str(run), "-n", str(n), "--base-url", base_url,
            "--model", "fake-teacher", "--student", str(student), "--max-heldout", "2",
            "--no-judge", "--config", str(config), "--concurrency", "1"]  # fmt: skip


@pytest.mark.slow
def test_stream_trains_while_sampling_each_sample_once(setup: tuple[Path, Path, Path]) -> None:
    root, student, config = setup
    run = root / "runs" / "s1"
    n = 30
    # the teacher takes its time over the last prompt (asked last: one request in flight), so
    # "did training start before the last answer?" does not depend on how fast the CLI starts
    last = _prompts(root, n)[-1]
    slow = Fault("slow", delay=10.0, match=last)
    with start_fake_server(latency=0.05, answer_words=6, faults=[slow]) as server:
        args = _args(run, server.base_url, student, config, n)
        proc = subprocess.Popen(
            _cli([*args, "--stream"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(PROMPTDISTILL_DATA=str(root), COLUMNS="200"),
        )
        # watch as a user would: does a training step appear while answers are still missing?
        answered_at_first_step = None
        while proc.poll() is None and answered_at_first_step is None:
            answered = len(_lines(run / "samples.jsonl"))
            if any(r["type"] == "train" for r in _lines(run / "metrics.jsonl")):
                answered_at_first_step = answered
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        assert answered_at_first_step is not None and answered_at_first_step < n + 2, out

        # a normal, complete run: adapter, datums, loss curve, report
        assert (run / "adapter" / "adapter_config.json").exists()
        assert (run / "datums" / "fingerprint.json").exists()
        assert (run / "loss.png").exists() and (run / "report.json").exists()
        assert "sample + train, streaming" in out and "streaming: one epoch" in out
        # one epoch: every training-split sample exactly once, nothing else
        trained = _trained_ids(run)
        expected = _train_split_ids(run)
        assert len(expected) > 10 and sorted(trained) == sorted(expected)
        stats = orjson.loads((run / "datums" / "stats.json").read_bytes())
        assert stats["train"]["examples"] == len(trained)
        # the LR decays with the share of the epoch trained, and ends near 0
        lrs = [r["lr"] for r in _lines(run / "metrics.jsonl") if r["type"] == "train"]
        assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2 * lrs[0]
        ledger = orjson.loads((run / "pipeline.json").read_bytes())
        assert ledger["train"]["complete"] and ledger["train"]["stream"]

        # without --stream: training is redone (not mixed with the streamed one), with a warning
        plain = _run(root, args)
        assert plain.returncode == 0, plain.stdout + plain.stderr
        assert "train configuration changed" in plain.stdout
        assert "it was trained with --stream" in plain.stdout
        assert sample_counts(server) == {1}  # no prompt asked twice
        train_rows = [r for r in _lines(run / "metrics.jsonl") if r["type"] == "train"]
        assert train_rows and all("ids" not in r for r in train_rows)  # epoch-based now
        superseded = list((run / "superseded").iterdir())
        assert len(superseded) == 1 and (superseded[0] / "adapter").is_dir()

        # --stream again, the samples complete: one epoch over them, nothing asked again
        streamed = _run(root, [*args, "--stream"])
        assert streamed.returncode == 0, streamed.stdout + streamed.stderr
        assert "now with --stream" in streamed.stdout and "sample: up to date" in streamed.stdout
        assert sample_counts(server) == {1}
        assert sorted(_trained_ids(run)) == sorted(expected)


def sample_counts(server: FakeOpenAI) -> set[int]:
    """How often each sampled prompt was asked (the eval's own requests aside)."""
    return {c for p, c in server.asked.items() if p.startswith(("Question", "Held-out"))}


@pytest.mark.slow
def test_ctrl_c_and_a_dead_endpoint_then_rerun_train_each_sample_once(
    setup: tuple[Path, Path, Path],
) -> None:
    """Ctrl-C mid-stream, a rerun that meets a fatal endpoint error, a rerun that finishes:
    across the three, every training sample is trained on exactly once."""
    root, student, config = setup
    run = root / "runs" / "s2"
    n = 40
    prompts = _prompts(root, n)
    stalls = Fault("slow", delay=60.0, match=prompts[-15], times=1)  # Ctrl-C comes meanwhile
    lags = Fault("slow", delay=8.0, match=prompts[-2], times=1)  # the rerun trains meanwhile
    dies = Fault("status", status=401, match=prompts[-1], times=1)  # then the key "expires"
    faults = [stalls, lags, dies]
    with start_fake_server(latency=0.05, answer_words=6, faults=faults) as server:
        args = [*_args(run, server.base_url, student, config, n), "--stream"]
        proc = subprocess.Popen(
            _cli(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(PROMPTDISTILL_DATA=str(root), COLUMNS="200"),
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if sum(r["type"] == "train" for r in _lines(run / "metrics.jsonl")) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, out + err
        assert "Traceback" not in err
        assert "rerun the same `promptdistill run ... --stream` command" in out
        assert len(_lines(run / "samples.jsonl")) < n + 2  # it stopped mid-stream
        stopped_at = max(r["step"] for r in _lines(run / "metrics.jsonl") if r["type"] == "train")
        assert (run / "checkpoints" / f"step-{stopped_at:06d}").is_dir()

        # the rerun resumes both; then the endpoint refuses the key: training stops with a
        # checkpoint, and the sampler's error is the one line the user sees; exit 3
        dead = _run(root, args)
        assert dead.returncode == 3, dead.stdout + dead.stderr
        assert f"resuming from step-{stopped_at:06d}" in dead.stdout
        assert "stopped at step" in dead.stdout
        assert "Traceback" not in dead.stderr and "answered 401" in dead.stderr
        assert dies.fired == 1 and len(_lines(run / "samples.jsonl")) == n + 1
        stopped_again = max(int(c.name[5:]) for c in (run / "checkpoints").iterdir())
        assert stopped_again > stopped_at

        again = _run(root, args)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "resuming from step-" in again.stdout
    samples = _lines(run / "samples.jsonl")
    assert len(samples) == n + 2
    assert max(Counter(r["id"] for r in samples).values()) == 1  # answered ones not asked again
    trained = _trained_ids(run)
    assert len(trained) == len(set(trained))  # none twice, across three runs ...
    assert sorted(trained) == sorted(_train_split_ids(run))  # ... and none skipped
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "report.json").exists()


def test_a_resumed_stream_continues_where_the_checkpoint_stood(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """In process: batches under the budget, oldest sample first; a stream rebuilt from a
    saved position (with samples still waiting in its buffer) hands out exactly the rest."""
    import threading

    from promptdistill.core.config import DatumConfig
    from promptdistill.core.rundir import RunDir
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_tokenizer
    from promptdistill.training.sources import Batching

    _, student, _ = setup
    run = RunDir(tmp_path / "run").create()
    write_samples(run.samples, 60, heldout=3, words=(1, 6))
    cfg = TrainConfig(batch_tokens=160)
    tokenizer = load_tokenizer(student)

    def stream() -> SampleStream:
        s = SampleStream(
            run, DatumConfig(), str(student), Renderer(tokenizer), cfg, [], threading.Event()
        )
        s.open()
        return s.with_batching(Batching(budget=cfg.batch_tokens, mode="pad"))

    first = stream()
    first.start(None)
    taken = [first.next() for _ in range(3)]
    position = first.position(taken[-1])
    first.close()
    assert position["pending"]  # read but not trained yet: must survive the restart
    for b in taken:
        assert b is not None and b.input_ids_BT.numel() <= cfg.batch_tokens
    assert taken[0] is not None and taken[0].ids[0] == "beethoven/train/00000"  # oldest first

    second = stream()
    second.start(orjson.loads(orjson.dumps(position)))  # as a checkpoint stores it
    rest = []
    while (b := second.next()) is not None:
        rest.append(b)
    second.close()
    ids = [i for b in [*taken, *rest] if b is not None for i in b.ids]
    wanted = [f"beethoven/train/{i:05d}" for i in range(60)]
    assert len(ids) == len(set(ids)) and set(ids) == {
        i for i in wanted if split_of(i, 0.1) == "train"
    }
    assert second.trained == len(ids) and second.progress([rest[-1]]) < 1.0


def test_tail_reads_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    tail = SampleTail(path)
    assert tail.read() == []  # no file yet: the sampler has not started
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c')  # "c" is being written
    assert tail.read() == [(0, b'{"id": "a"}'), (12, b'{"id": "b"}')]
    assert tail.read() == [] and tail.offset == 24
    with path.open("ab") as f:
        f.write(b'"}\n')
    assert tail.read() == [(24, b'{"id": "c"}')]
    assert tail.line_at(12) == b'{"id": "b"}'


def test_stream_schedule_follows_the_share_of_examples_trained() -> None:
    cfg = TrainConfig(lr=1.0, warmup=0, schedule="linear")
    # the step count (and any estimate of the total) does not move it; the share trained does
    assert lr_at(3, 10, cfg, progress=0.5) == lr_at(300, 7, cfg, progress=0.5) == 0.5
    assert lr_at(5, 10, cfg, progress=1.0) == 0.0
    assert lr_at(5, 10, cfg, progress=1.3) == 0.0  # more examples than expected: stays at 0
    cosine = TrainConfig(lr=1.0, warmup=2)
    assert lr_at(0, 10, cosine, progress=0.9) == pytest.approx(1 / 3)  # warmup is in steps
    assert lr_at(2, 10, cosine, progress=0.0) == 1.0
    assert lr_at(2, 10, cosine, progress=0.5) == pytest.approx(0.5)
