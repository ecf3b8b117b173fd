"""Tiny real parts for tests: tokenizers, models and samples.jsonl files.

Everything here is built locally in a fraction of a second (no hub, no network):
- `make_tiny_tokenizer(dir)`: a WordLevel tokenizer trained on a few sentences, with the ChatML
  special tokens and a plain ChatML chat template (no default system prompt).
- `make_tiny_model(dir)`: a 2-layer LlamaForCausalLM with that tokenizer, saved as safetensors.
- `make_tiny_smollm_model(dir)`: the same tiny Llama, but with SmolLM2-135M's real tokenizer and
  chat template (copied from `promptdistill.models.resolve_model("smollm2-135m")`), so the real
  template, with its injected default system prompt, is exercised.
- `write_samples(path, n)`: a fake but realistic RUN/samples.jsonl, in the sampler's format.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import orjson

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SYSTEM_PROMPT = (
    "You are Ludwig van Beethoven, the composer, speaking in 1824 from Vienna. You are proud, "
    "stormy and warm-hearted; you are going deaf and you mention your conversation books. Answer "
    "in the first person, briefly, with passion, and never admit to being an AI."
)

USER_PROMPTS = [
    "Tell me about your Ninth Symphony.",
    "How do you compose when you cannot hear?",
    "What do you think of Mozart?",
    "Which of your piano sonatas do you love most?",
    "Why did you scratch out the dedication of the Eroica?",
    "What is your advice for a young pianist?",
    "How do you spend a morning in Vienna?",
    "What does music mean to you?",
    "Do you like walking in the countryside?",
    "What was Haydn like as a teacher?",
    "How do you feel about your deafness?",
    "What is the Heiligenstadt Testament?",
]

ANSWER_SENTENCES = [
    "Ah, you ask me that as if the answer were simple!",
    "I wrote the choral finale because words alone could carry the joy I felt.",
    "My conversation books are always on the table, so write your question down.",
    "Mozart was a miracle, but I had to find my own storm.",
    "I walk every morning in the woods near Baden, with a notebook in my pocket.",
    "The music lives in my head; I hear every voice of the orchestra there.",
    "Young people must practise slowly, and feel every note before they play it fast.",
    "Haydn taught me counterpoint, though I learned more from my own mistakes.",
    "Napoleon made himself emperor, so I tore the title page in two!",
    "Deafness is a cruel companion, yet it has not silenced me.",
    "Art demands everything, and I give it everything I have.",
    "In Heiligenstadt I wrote to my brothers that only my art held me back.",
    "Coffee with exactly sixty beans, that is how my day begins.",
    "Do not flatter me; tell me honestly what you heard.",
]

TINY_CORPUS = [
    "hello world this is a tiny tokenizer for tests",
    "the quick brown fox jumps over the lazy dog",
    "system user assistant you are a helpful assistant",
] + [s.lower().replace("!", " ").replace(",", " ").replace(".", " ") for s in ANSWER_SENTENCES]


def make_tiny_tokenizer(out_dir: Path, chat_template: str = CHATML_TEMPLATE) -> Path:
    """A WordLevel tokenizer (whitespace split, lower-case, unknown words -> <unk>) saved as a
    PreTrainedTokenizerFast. Newlines are their own token, so ChatML renders prefix-stably."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    words = [w for p in USER_PROMPTS + ANSWER_SENTENCES + [SYSTEM_PROMPT] for w in p.split()]
    trainer = trainers.WordLevelTrainer(special_tokens=specials + ["\n"], min_frequency=1)
    tok.train_from_iterator(TINY_CORPUS + words, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = chat_template
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def _save_tiny_llama(
    out_dir: Path, vocab_size: int, eos_id: int, pad_id: int, seed: int, hidden: int = 32
) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)


def make_tiny_model(out_dir: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A random 2-layer Llama (hidden 32; 64 for bitsandbytes' CPU 4-bit kernels, which need
    multiples of 64) plus the tiny ChatML tokenizer, in one directory."""
    from transformers import AutoTokenizer

    make_tiny_tokenizer(out_dir)
    tok = AutoTokenizer.from_pretrained(out_dir)
    _save_tiny_llama(out_dir, len(tok), tok.eos_token_id, tok.pad_token_id, seed, hidden)
    return out_dir


def make_tiny_smollm_model(out_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama that speaks SmolLM2-135M's vocabulary, with its real tokenizer
    files and chat template (the one that injects a default system prompt)."""
    from transformers import AutoTokenizer

    from promptdistill.models.resolve import resolve_model

    src = resolve_model("smollm2-135m")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        if (src / name).exists():
            shutil.copy(src / name, out_dir / name)
    tok = AutoTokenizer.from_pretrained(out_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    _save_tiny_llama(out_dir, len(tok), tok.eos_token_id, pad, seed)
    return out_dir


def sample_record(
    i: int,
    rng: random.Random,
    split: str = "train",
    words: tuple[int, int] = (1, 4),
    truncated: bool = False,
) -> dict[str, Any]:
    """One record in the format the issue #3 sampler writes to RUN/samples.jsonl."""
    user = USER_PROMPTS[rng.randrange(len(USER_PROMPTS))]
    # distinct sentences: a teacher answer that repeats itself is a loop, which datums drop
    answer = " ".join(rng.sample(ANSWER_SENTENCES, min(rng.randint(*words), len(ANSWER_SENTENCES))))
    prompt_tokens, completion_tokens = 60 + len(user.split()), len(answer.split())
    return {
        "id": f"beethoven/{split}/{i:05d}",
        "split": split,
        "category": "music",
        "prompt_set": "beethoven",
        "gold": None,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
        "finish_reason": "length" if truncated else "stop",
        "truncated": truncated,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "latency_s": round(rng.uniform(0.2, 2.0), 3),
        "teacher": {
            "base_url": "http://127.0.0.1:8000/v1",
            "model": "smollm2-135m",
            "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256, "seed": None},
        },
    }


def write_samples(
    path: Path,
    n: int,
    seed: int = 0,
    heldout: int = 0,
    words: tuple[int, int] = (1, 4),
    start: int = 0,
) -> list[dict[str, Any]]:
    """Append `n` train records (ids start..start+n-1) and `heldout` held-out records."""
    rng = random.Random(seed * 1_000_003 + start)
    records = [sample_record(start + i, rng, words=words) for i in range(n)]
    records += [sample_record(start + i, rng, split="heldout", words=words) for i in range(heldout)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        for r in records:
            f.write(orjson.dumps(r) + b"\n")
    return records
