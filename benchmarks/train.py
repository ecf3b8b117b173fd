"""Training throughput: promptdistill's trainer vs. Hugging Face Trainer + PEFT (issue #5).

Same student (SmolLM2-135M-Instruct), same data, same number of optimizer steps, same effective
batch (examples per step), same LoRA (r 16, alpha 32, all-linear), same AdamW (lr, beta2 0.95,
linear schedule, warmup, grad-norm clip 1.0) and the same loss mask (-100 labels on prompt
tokens for HF), through three trainers:
- ours:    `training.run.train_run` (bf16 base + fp32 LoRA, bucketed token-budget batches,
           loss only at answer positions, prefetch thread);
- tuned:   HF Trainer as a user tuning for speed: padding collator, group_by_length sampler,
           bf16=True (CPU autocast);
- default: HF Trainer with default TrainingArguments (fp32, random sampler, padding collator);
- ours4bit: ours with `--quantize 4bit` (QLoRA: nf4 base, double quantised, bf16 compute;
           issue #17), against `ours` on the same data: peak RSS, the model's weight bytes and
           tokens/s. Pass `--trainers ours,ours4bit`.

Each trainer runs in its own subprocess, so peak RSS is its own. Tokens/s counts real (non-pad)
tokens. "equal loss" is checked on the mean training loss of the last quarter of the steps and
on the validation loss of each trained adapter, computed by one function on the same examples.

    .venv/bin/python benchmarks/train.py --steps 10 --batch 8 --examples 400 --threads 0
        # 3 interleaved rounds of the three trainers, ~20 minutes on 2 cores
    .venv/bin/python benchmarks/train.py --steps 4 --examples 200 --rounds 1  # quick check
    .venv/bin/python benchmarks/train.py --trainers ours,ours4bit --steps 8 --rounds 3

Rounds are interleaved (ours, tuned, default; then tuned, default, ours; ...) and the ratios
are those of the medians: on a shared machine the speed drifts by a third over minutes (the
tuned Trainer alone ran at 187-253 tokens/s in one session), so a ratio of two single runs
made minutes apart moves with the drift, not with the trainers.

If no real samples are given (--samples RUN/samples.jsonl), it writes synthetic Beethoven
conversations: the real persona system prompt and prompt-set user prompts, with answers drawn
from Beethoven-style sentences at the length distribution of a max_tokens=256 teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

WARM = 2  # steps left out of the steady-state rate

SENTENCES = [
    "Ah, you ask me that as if the answer were simple!",
    "I wrote the choral finale because words alone could carry the joy I felt.",
    "Write your question in my conversation book; my ears have betrayed me again.",
    "Mozart was a miracle, but I had to find my own storm and my own sunrise.",
    "Every morning I walk in the woods near Baden with a sketchbook in my coat pocket.",
    "The music lives in my head; I hear every voice of the orchestra there, clearer than before.",
    "A young pianist must practise slowly and feel each note before playing it fast.",
    "Haydn taught me counterpoint, though I learned more from Albrechtsberger and my mistakes.",
    "When Napoleon crowned himself emperor I tore the title page of the Eroica in two!",
    "Deafness is a cruel companion, yet it has not silenced the music within me.",
    "Art demands everything of a man, and I have given it everything I have.",
    "In Heiligenstadt I wrote to my brothers that only my art held me back from despair.",
    "Coffee with exactly sixty beans, counted by my own hand: that is how my day begins.",
    "Do not flatter me, my friend; tell me honestly what you heard in the Adagio.",
    "The publishers of Vienna are thieves, every one of them, and Artaria the worst.",
    "My nephew Karl gives me more grief than all the critics of Leipzig together.",
    "Prince Lichnowsky once tried to make me play for French officers; I walked out into the rain.",
    "A symphony is a world: it must contain everything, the storm and the shepherd's song.",
    "I sketch a theme a hundred times before it is worthy of the orchestra.",
    "The Danube at dawn sounds like a slow movement in E-flat, warm and unhurried.",
    "Schiller's words have followed me since Bonn; at last I have set them to music.",
    "Dance, my friend, but do not ask me to dance; I would trample the whole ballroom!",
    "Rossini pleases the crowd, and the crowd is easily pleased.",
    "Freedom and progress are the goals of art, as they are of life itself.",
]


def write_synthetic_samples(path: Path, n: int, seed: int = 0) -> None:
    """Beethoven conversations in RUN/samples.jsonl format (see issue #3)."""
    from promptdistill.personas import expand_prompts, load_persona

    loaded = load_persona("beethoven")
    system = loaded.persona.system_prompt
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for p in expand_prompts(loaded, n, seed):
            # ~15 tokens per sentence: 15% short (2-5), 70% medium (5-15), 15% cut at 256 tokens
            r = rng.random()
            count = rng.randint(2, 5) if r < 0.15 else rng.randint(5, 15) if r < 0.85 else 22
            answer = " ".join(rng.choice(SENTENCES) for _ in range(count))
            truncated = count == 22
            if truncated:
                answer = " ".join(answer.split()[:200])
            rec = {
                "id": p.id,
                "split": p.split,
                "category": p.category,
                "prompt_set": p.prompt_set,
                "gold": p.gold,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": p.text},
                    {"role": "assistant", "content": answer},
                ],
                "finish_reason": "length" if truncated else "stop",
                "truncated": truncated,
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "latency_s": 0.0,
                "teacher": {"base_url": None, "model": "synthetic", "sampling": {}},
            }
            f.write(orjson.dumps(rec) + b"\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- shared data


def load_examples(run: Path, max_len: int) -> tuple[Any, Any, Any, Any]:
    """The datums every trainer uses (ours builds them; HF gets them as input_ids + labels)."""
    from promptdistill.core.config import DatumConfig
    from promptdistill.core.rundir import RunDir
    from promptdistill.datums.store import prepare_datums
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    # keep_loops: the synthetic answers repeat sentences; the same examples as before issue #13
    cfg = DatumConfig(max_len=max_len, keep_loops=True)
    data, _ = prepare_datums(RunDir(run), Renderer(tok), cfg, "smollm2-135m")
    return tok, data, data.indices("train"), data.indices("val")


def val_loss(lm: Any, data: Any, val_idx: Any) -> float:
    """Weighted NLL per answer token of the validation examples (eval's scorer)."""
    from promptdistill.evaluation.scoring import score_nll

    scored = score_nll(lm, [data.example(int(i)) for i in val_idx], batch_tokens=4096)
    return sum(s.nll_sum for s in scored) / max(1, sum(s.tokens for s in scored))


# --------------------------------------------------------------------------- trainers


def weight_mb(model: Any) -> float:
    """Bytes the model's parameters and buffers hold (a 4-bit weight: its packed bytes)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def run_ours(a: argparse.Namespace, quantize: str = "none") -> dict[str, Any]:
    from rich.console import Console

    from promptdistill.core.config import DatumConfig, StudentConfig, TrainConfig
    from promptdistill.core.io import read_jsonl
    from promptdistill.core.rundir import RunDir
    from promptdistill.training.run import train_run

    _, data, train_idx, val_idx = load_examples(a.run, a.max_len)
    mean_len = float(data.lengths()[train_idx].mean())
    cfg = TrainConfig(
        steps=a.steps,
        epochs=None,
        lr=a.lr,
        warmup=a.warmup,
        schedule="linear",
        batch_tokens=int(a.batch * mean_len * 1.08),
        save_every=10**6,
        eval_every=10**6,
        eval_examples=1,
        seed=0,
    )
    console = Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115
    t0 = time.perf_counter()
    res = train_run(
        RunDir(a.run),
        StudentConfig(quantize=quantize),  # type: ignore[arg-type]
        DatumConfig(max_len=a.max_len, keep_loops=True),
        cfg,
        console,
        fresh=True,
    )
    wall = time.perf_counter() - t0
    trained_rss = peak_rss_mb()  # before the fp32 model for the val loss below is loaded
    rows = [r for r in read_jsonl(a.run / "metrics.jsonl") if r.get("type") == "train"]
    losses = [r["loss"] for r in rows]
    # steady state: without the first WARM steps (allocator and oneDNN kernel warm-up)
    steady = rows[WARM:]
    steady_rate = sum(r["tokens"] for r in steady) / max(1e-9, sum(r["step_s"] for r in steady))
    # per CPU second of the whole process (all threads): what a loaded machine does not skew
    cpu_rate = sum(r["tokens"] for r in steady) / max(1e-9, sum(r["cpu_s"] for r in steady))
    examples = int(sum(r["tokens"] for r in rows) / mean_len)
    # val loss of the trained adapter, by the same function as for the HF runs (fp32 base)
    from peft import PeftModel

    from promptdistill.models.load import load_causal_lm

    weights = weight_mb(load_causal_lm("smollm2-135m", "auto", quantize=quantize))
    base = load_causal_lm("smollm2-135m", dtype="fp32")
    model = PeftModel.from_pretrained(base, str(a.run / "adapter"))
    return {
        "train_peak_rss_mb": trained_rss,
        "weights_mb": weights,
        "tokens_per_s": res.tokens_per_s,
        "steady_tokens_per_s": steady_rate,
        "tokens_per_cpu_s": cpu_rate,
        "losses": losses,
        "data_wait_pct": 100 * res.data_wait_fraction,
        "wall_s": wall,
        "examples_seen_approx": examples,
        "batch_tokens": cfg.batch_tokens,
        "val_loss": val_loss(model.base_model.model, data, val_idx),
    }


def run_hf(a: argparse.Namespace, tuned: bool) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from promptdistill.models.load import load_causal_lm

    tok, data, train_idx, val_idx = load_examples(a.run, a.max_len)
    examples = []
    for i in train_idx.tolist():
        t, w = data.example(i)
        ids = t.tolist()
        # HF shifts labels itself: label[i] = token i where it carries loss, else -100
        examples.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [x if wt > 0 else -100 for x, wt in zip(ids, w, strict=True)],
            }
        )
    base = load_causal_lm("smollm2-135m", dtype="fp32")
    base.train()
    torch.manual_seed(0)
    model = get_peft_model(
        base,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    inner = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    stats: dict[str, Any] = {
        "tokens": 0,
        "collate_s": 0.0,
        "t0": 0.0,
        "t1": 0.0,
        "losses": [],
        "step_tokens": [],
        "step_end": [],
    }

    def collate(features: list[dict[str, Any]]) -> Any:
        t0 = time.perf_counter()
        out = inner(features)
        n = int(out["attention_mask"].sum()) - len(features)  # input positions predicted
        stats["tokens"] += n
        stats["step_tokens"].append(n)
        stats["collate_s"] += time.perf_counter() - t0
        return out

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kw: Any) -> None:
            stats["t0"] = time.perf_counter()

        def on_step_end(self, *args: Any, **kw: Any) -> None:
            stats["step_end"].append(time.perf_counter())

        def on_train_end(self, *args: Any, **kw: Any) -> None:
            stats["t1"] = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                stats["losses"].append(float(logs["loss"]))

    kwargs: dict[str, Any] = {}
    if tuned:
        kwargs = {"bf16": True, "train_sampling_strategy": "group_by_length"}
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        learning_rate=a.lr,
        warmup_steps=a.warmup,
        lr_scheduler_type="linear",
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **kwargs,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=examples, data_collator=collate, callbacks=[Clock()]
    )
    trainer.train()
    wall = stats["t1"] - stats["t0"]
    ends = stats["step_end"]
    steady_tokens = sum(stats["step_tokens"][WARM : len(ends)])
    steady_rate = steady_tokens / max(1e-9, ends[-1] - ends[WARM - 1])
    model.eval()
    return {
        "tokens_per_s": stats["tokens"] / wall,
        "steady_tokens_per_s": steady_rate,
        "losses": stats["losses"],
        "data_wait_pct": 100 * stats["collate_s"] / wall,
        "wall_s": wall,
        "examples_seen": a.steps * a.batch,
        "val_loss": val_loss(model.base_model.model, data, val_idx),
    }


# --------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8, help="examples per optimizer step")
    ap.add_argument("--examples", type=int, default=600)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--samples", type=Path, default=None, help="use a real RUN/samples.jsonl")
    ap.add_argument("--only", choices=["ours", "ours4bit", "tuned", "default"], default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each trainer, interleaved")
    ap.add_argument("--trainers", default="ours,tuned,default")
    ap.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.only:  # child process: one trainer, one JSON line on stdout
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        fn = {
            "ours": run_ours,
            "ours4bit": lambda x: run_ours(x, "4bit"),
            "tuned": lambda x: run_hf(x, True),
            "default": lambda x: run_hf(x, False),
        }[a.only]
        out = fn(a)
        out["peak_rss_mb"] = peak_rss_mb()
        print("RESULT " + json.dumps(out))
        return

    work = Path(tempfile.mkdtemp(prefix="pd-bench-train-"))
    samples = work / "run" / "samples.jsonl"
    if a.samples:
        samples.parent.mkdir(parents=True)
        samples.write_bytes(a.samples.read_bytes())
    else:
        write_synthetic_samples(samples, a.examples)
    print(
        f"load before: {os.getloadavg()[0]:.2f} (1-min), cores: {os.cpu_count()}, "
        f"torch threads: {a.threads or 'default'}, {a.rounds} round(s)",
        flush=True,
    )
    names = [n for n in ("ours", "ours4bit", "tuned", "default") if n in a.trainers.split(",")]
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for k in range(a.rounds):
        # the order turns every round, so that no trainer always runs first (or last) while
        # the shared machine's speed drifts
        for name in names[k % len(names) :] + names[: k % len(names)]:
            r = run_child(a, work, name, samples, k)
            results[name].append(r)
            print(
                f"round {k + 1} {name:8s} {r['tokens_per_s']:8.1f} tok/s "
                f"({r['steady_tokens_per_s']:.1f} steady)  final train loss {r['final_loss']:.4f}"
                f"  val loss {r['val_loss']:.4f}  data wait {r['data_wait_pct']:.2f}%  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB  wall {r['wall_s']:.1f}s"
                + (f"  (while training: peak RSS {r['train_peak_rss_mb']:.0f} MB, weights "
                   f"{r['weights_mb']:.0f} MB, {r['tokens_per_cpu_s']:.1f} tok per CPU s)"
                   if "weights_mb" in r else ""),
                flush=True,
            )  # fmt: skip
    print(f"load after: {os.getloadavg()[0]:.2f}")
    report(results)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"details: {work / 'results.json'}")


def run_child(
    a: argparse.Namespace, work: Path, name: str, samples: Path, k: int
) -> dict[str, Any]:
    """One trainer in its own process (its own peak RSS); its RESULT line."""
    run = work / f"run-{name}-{k}"
    run.mkdir()
    (run / "samples.jsonl").write_bytes(samples.read_bytes())
    cmd = [
        sys.executable, __file__, "--only", name, "--run", str(run), "--steps", str(a.steps),
        "--batch", str(a.batch), "--lr", str(a.lr), "--warmup", str(a.warmup),
        "--threads", str(a.threads), "--max-len", str(a.max_len),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    r: dict[str, Any] = json.loads(line[-1][7:])
    q = max(1, len(r["losses"]) // 2)
    r["final_loss"] = sum(r["losses"][-q:]) / q
    return r


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    """Medians over the rounds, the ratios of the medians, and each round's own ratio."""
    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "steady_tokens_per_s")}
        for n, rs in results.items()
    }
    if "ours" in results and "ours4bit" in results:
        quantized(results["ours"], results["ours4bit"])
    results = {n: rs for n, rs in results.items() if n != "ours4bit"}
    if "ours" not in results:
        return
    ours = results["ours"]
    for name in (n for n in results if n != "ours"):
        other = results[name]
        per_round = [
            o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(ours, other, strict=True)
        ]
        print(
            f"ours / {name}: {med['ours']['tokens_per_s'] / med[name]['tokens_per_s']:.2f}x "
            f"tokens/s, median of {len(ours)} rounds ({med['ours']['tokens_per_s']:.0f} vs "
            f"{med[name]['tokens_per_s']:.0f}; steady "
            f"{med['ours']['steady_tokens_per_s'] / med[name]['steady_tokens_per_s']:.2f}x); "
            f"per round {', '.join(f'{x:.2f}x' for x in per_round)}; final train loss "
            f"{100 * (ours[0]['final_loss'] / other[0]['final_loss'] - 1):+.1f}%, val loss "
            f"{100 * (ours[0]['val_loss'] / other[0]['val_loss'] - 1):+.1f}%"
        )


def quantized(bf16: list[dict[str, Any]], q4: list[dict[str, Any]]) -> None:
    """4-bit against bf16 on the same run: memory and speed, medians with their ranges."""

    def stat(rs: list[dict[str, Any]], key: str, f: str) -> str:
        xs = [r[key] for r in rs if r.get(key) is not None]
        return f"{statistics.median(xs):{f}} [{min(xs):{f}}-{max(xs):{f}}]" if xs else "-"

    for key, label, f in (("train_peak_rss_mb", "peak RSS while training, MB", ".0f"),
                          ("weights_mb", "model weights, MB", ".0f"),
                          ("tokens_per_s", "tokens/s", ".1f"),
                          ("tokens_per_cpu_s", "tokens per CPU second (steady)", ".1f"),
                          ("val_loss", "val loss", ".4f")):  # fmt: skip
        ratio = statistics.median(r[key] for r in q4) / statistics.median(r[key] for r in bf16)
        print(f"{label:32s} bf16 {stat(bf16, key, f):>22s}  4bit {stat(q4, key, f):>22s}  "
              f"4bit/bf16 {ratio:.2f}x (median of {len(q4)})")  # fmt: skip


if __name__ == "__main__":
    main()
