"""How much faster eval's model work is than the obvious way, measured in one process.

1. NLL of teacher answers: ours (length-sorted batches, LM head only on answer positions) vs
   one example at a time through `model(input_ids, labels=...)` (full logits).
2. Answers: ours (batched, left padding, equal-sized batches) vs `generate` one prompt at a time.

Both sides get the same model, dtype, prompts and answer lengths; the script prints each time
and the ratio. Usage (a quiet machine; check `uptime` first):

    .venv/bin/python benchmarks/eval_speed.py [--model smollm2-135m] [--n 40] [--new 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from promptdistill.datums.build import conversation_to_datum
from promptdistill.evaluation.scoring import score_nll
from promptdistill.models.chat import Renderer
from promptdistill.models.generate import generate
from promptdistill.models.load import load_causal_lm, load_tokenizer
from promptdistill.personas import expand_prompts, load_persona


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--new", type=int, default=64, help="new tokens per answer")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = load_tokenizer(args.model)
    model = load_causal_lm(args.model, args.dtype)
    persona = load_persona("beethoven")
    prompts = [p.text for p in expand_prompts(persona, args.n, seed=0)]
    answer = (
        "Donnerwetter! You ask about my Ninth, mein Freund? At the Kärntnertor the contralto "
        "had to turn me round to see the applause, for I heard nothing. "
    ) * 3
    renderer = Renderer(tok)
    pad = renderer.pad_id
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(f"{args.model} ({dtype}), {args.n} prompts, {torch.get_num_threads()} threads")

    # ---- 1. NLL
    examples = []
    for i, p in enumerate(prompts):
        convo = [
            {"role": "user", "content": p},
            {"role": "assistant", "content": answer[: 80 + 7 * i]},
        ]
        d = conversation_to_datum(convo, renderer)
        examples.append((d.tokens, d.weights))
    score_nll(model, examples[:2])  # warm-up
    t = time.perf_counter()
    ours = score_nll(model, examples)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    base_sums = []
    with torch.inference_mode():
        for toks, w in examples:
            ids = torch.tensor([toks])
            labels = torch.where(torch.tensor([w]) > 0, ids, torch.full_like(ids, -100))
            loss = model(input_ids=ids, labels=labels).loss
            base_sums.append(float(loss) * (sum(1 for x in w[1:] if x > 0)))
    t_base = time.perf_counter() - t
    drift = max(abs(o.nll_sum - b) / max(b, 1e-9) for o, b in zip(ours, base_sums, strict=True))
    print(
        f"NLL      one at a time {t_base:6.2f} s | ours {t_ours:6.2f} s | "
        f"speed-up x{t_base / t_ours:.2f} (max relative difference {drift:.1e})"
    )

    # ---- 2. generation (greedy, a fixed number of new tokens so both sides do equal work)
    rendered = [renderer.prompt([{"role": "user", "content": p}]) for p in prompts]
    never = [len(tok) + 10]  # an id no model emits: every answer is exactly --new tokens
    kw = {"stop_ids": never, "pad_id": pad}
    generate(model, rendered[:2], max_new_tokens=4, **kw)  # warm-up
    t = time.perf_counter()
    generate(model, rendered, max_new_tokens=args.new, batch_size=args.batch_size, **kw)
    t_ours = time.perf_counter() - t
    k = max(4, args.n // 8)  # one at a time is slow: time a subset and scale
    t = time.perf_counter()
    for r in rendered[:k]:
        generate(model, [r], max_new_tokens=args.new, batch_size=1, **kw)
    t_base = (time.perf_counter() - t) * args.n / k
    tokens = args.n * args.new
    print(
        f"generate one at a time {t_base:6.1f} s ({tokens / t_base:5.1f} tok/s, scaled from {k}) "
        f"| ours {t_ours:6.1f} s ({tokens / t_ours:5.1f} tok/s) | speed-up x{t_base / t_ours:.2f}"
    )


if __name__ == "__main__":
    main()
