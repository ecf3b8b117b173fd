"""The one chat renderer: messages -> token ids, with the student's own chat template.

Training examples (datums/build.py), generation prompts (eval, compare, on-policy sampling) and
the scoring of answers all render through `Renderer`, so the student sees at inference exactly
the tokens it was trained on. SmolLM2's template injects a default system prompt ("You are a
helpful AI assistant named SmolLM ...") when a conversation has none; that happens here for
training and inference alike (tinker-cookbook: one renderer builds both supervised examples and
generation prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, str]


class Renderer:
    """Renders conversations with one tokenizer's chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = sorted(end_of_turn_ids(tokenizer))
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.stop_ids[0]
        self._by_text: dict[str, int] | None = None
        # special tokens that are not an end of turn: an answer that holds one does not read
        # back as the same tokens, so generated answers that are sent on never contain one
        special = {int(i) for i in tokenizer.all_special_ids}
        special |= {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self.inner_special_ids = sorted(special - set(self.stop_ids))

    def tokens(self, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
        """The conversation's token ids; with `generation_prompt`, followed by the assistant
        header, ready for the model to answer."""
        out = self.tokenizer.apply_chat_template(
            list(messages), tokenize=True, add_generation_prompt=generation_prompt
        )
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(t) for t in ids]

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        """What a model is given to answer `messages`."""
        return self.tokens(messages, generation_prompt=True)

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True))

    def system_tokens_removed(self, system: str) -> int:
        """How many fewer prompt tokens the student sees than the teacher did, for one system
        prompt: rendered with it minus rendered without it (net of an injected default)."""
        user = [{"role": "user", "content": "x"}]
        with_system = self.tokens([{"role": "system", "content": system}, *user], False)
        return len(with_system) - len(self.tokens(user, False))

    def token_text(self, token: int) -> str:
        """One token's text, as OpenAI-style endpoints name tokens in their logprobs."""
        return str(self.tokenizer.decode([token]))

    def id_of_text(self, text: str) -> int | None:
        """The token whose text is `text` (the first one, where several decode alike)."""
        if self._by_text is None:
            self._by_text = {}
            for i in range(len(self.tokenizer)):
                self._by_text.setdefault(self.token_text(i), i)
        return self._by_text.get(text)

    def count(self, text: str) -> int:
        """Tokens in plain text (no template, no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: EOS and, if the vocabulary has it, <|im_end|>."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return ids
