"""Typed configuration for every stage, as pydantic models.

Files on disk (personas/, prompts/, RUN/config.yaml) are parsed into these models, and the CLI
builds them from flags. They are passed down the call chain explicitly; nothing reads settings
from globals. Secrets never live here: a teacher names the *environment variable* or key file
that holds its API key, never the key itself.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from promptdistill.core.answers import DEFAULT_ANSWER_PATTERN

SLOT_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored. No number
    is infinite or NaN (`--lr inf` would train to NaN, issue #16)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------- personas & prompts


class SamplingParams(StrictModel):
    """How the teacher samples. A persona file may set defaults; CLI flags override them."""

    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=32768)
    seed: int | None = None


class Persona(StrictModel):
    name: str
    description: str
    system_prompt: str = Field(min_length=1)
    prompt_sets: list[str] = Field(min_length=1)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    # issue #17: what only the teacher is told (e.g. "Think step by step, then end with Final
    # Answer: N"); appended to its system prompt, stripped with it from the datums, so the
    # student learns to reason unprompted (personas.teacher_system)
    teacher_instructions: str | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("use letters, digits, '-', '_' or '.'")
        return v

    @field_validator("system_prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the system prompt is blank; write the persona's prompt here")
        return v


class SlotRecord(BaseModel):
    """A slot value with extra fields, e.g. {text: "12 times 7", answer: "84"}."""

    model_config = ConfigDict(extra="allow")
    text: str

    def field(self, name: str) -> str | None:
        if name == "text":
            return self.text
        value = (self.model_extra or {}).get(name)
        return None if value is None else str(value)


SlotValue = str | SlotRecord
SlotTable = dict[str, Annotated[list[SlotValue], Field(min_length=1)]]


class Template(StrictModel):
    text: str = Field(min_length=1)
    gold: str | None = None


class Category(StrictModel):
    templates: list[Template] = Field(min_length=1)
    slots: SlotTable = Field(default_factory=dict)

    @field_validator("templates", mode="before")
    @classmethod
    def _plain_strings(cls, v: Any) -> Any:
        # `- "Tell me about {work}."` is shorthand for `- text: "Tell me about {work}."`
        if isinstance(v, list):
            return [{"text": t} if isinstance(t, str) else t for t in v]
        return v


class HeldoutPrompt(StrictModel):
    prompt: str = Field(min_length=1)
    gold: str | None = None


class PromptSource(StrictModel):
    """User prompts read from a file or a dataset, beside the templates (issue #14).

    Exactly one of `path` (relative to the prompt set's own file) and `dataset` (a hub id).
    """

    path: str | None = Field(default=None, min_length=1)
    dataset: str | None = Field(default=None, min_length=1)
    # None: from the path (.jsonl, .csv, .tsv, .txt, .parquet, or a save_to_disk folder)
    format: Literal["jsonl", "csv", "tsv", "text", "parquet", "disk", "hub"] | None = None
    # the JSONL/Parquet/dataset field or CSV/TSV column holding the prompt; None: `prompt`,
    # else `messages` (its first user message), else a file's only column
    field: str | None = Field(default=None, min_length=1)
    column: str | None = Field(default=None, min_length=1)
    gold: str | None = Field(default=None, min_length=1)  # a field or column with gold answers
    split: str | None = Field(default=None, min_length=1)  # of a dataset; default: train
    category: str | None = Field(default=None, min_length=1)  # default: the file's name
    # held out for eval, never trained on, chosen by a stable hash of each prompt's text:
    # a fraction (0.1) or a count (40)
    heldout: int | float | None = None

    @field_validator("heldout", mode="before")
    @classmethod
    def _heldout(cls, v: Any) -> Any:
        # checked on the value as written: `1.0` or `0` is neither a fraction nor a count
        if v is None:
            return v
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
        if isinstance(v, float) and 0.0 < v < 1.0:
            return v
        raise ValueError(
            f"{v!r} is neither a fraction between 0 and 1 (0.1) nor a count of prompts (40)"
        )

    @model_validator(mode="after")
    def _one_place(self) -> PromptSource:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'path' (a file) and 'dataset' (a hub id)")
        if self.field is not None and self.column is not None:
            raise ValueError("give 'field' or 'column', not both (they mean the same)")
        return self

    @property
    def key(self) -> str | None:
        """The field or column named by the user, if any."""
        return self.field or self.column


class PromptSet(StrictModel):
    name: str
    description: str = ""
    slots: SlotTable = Field(default_factory=dict)
    categories: dict[str, Category] = Field(default_factory=dict)
    sources: list[PromptSource] = Field(default_factory=list)
    heldout: list[HeldoutPrompt] = Field(default_factory=list)
    teacher_instructions: str | None = None  # for this set's prompts, after the persona's

    @model_validator(mode="after")
    def _slot_names(self) -> PromptSet:
        if not self.categories and not self.sources:
            raise ValueError(
                "a prompt set needs 'categories' (templates) or 'sources' (prompt files)"
            )
        names = list(self.slots) + [s for c in self.categories.values() for s in c.slots]
        for slot in names:
            if not SLOT_NAME.match(slot):
                raise ValueError(f"slot name {slot!r} must match [a-z_][a-z0-9_]*")
        return self


# --------------------------------------------------------------------------- stages


class EndpointConfig(StrictModel):
    """One of several endpoints serving the teacher model (issue #15)."""

    base_url: str
    concurrency: int | None = Field(None, ge=1, le=100_000)  # None: the teacher's `concurrency`


class TeacherConfig(StrictModel):
    """An OpenAI-compatible chat endpoint. base_url None means the embedded local teacher.

    Several endpoints (vLLM replicas, regions; issue #15): `endpoints` lists every one and
    `base_url` is the first, which is what eval, the judge and the REPL talk to."""

    base_url: str | None = None
    model: str = "smollm2-135m"
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: str | None = None
    concurrency: int = Field(64, ge=1, le=100_000)
    # below 1 request per minute a run never ends (issue #16)
    rpm: float | None = Field(None, ge=1)
    tpm: float | None = Field(None, gt=0)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(8, ge=0)
    endpoints: list[EndpointConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _first_endpoint(self) -> TeacherConfig:
        if self.endpoints and self.base_url is None:
            self.base_url = self.endpoints[0].base_url
        elif self.endpoints and self.base_url != self.endpoints[0].base_url:
            raise ValueError("base_url must be the first of `endpoints` (or leave it out)")
        return self


class BatchConfig(StrictModel):
    """Sampling through the Batch API (`/v1/files` + `/v1/batches`, issue #15): half the price
    and its own, larger rate limits, in return for answers within 24 h."""

    api: bool = False  # --batch-api
    # lines a batch did not answer (failed, expired, cancelled): another batch, or online
    fallback: Literal["batch", "online"] = "batch"
    rounds: int = Field(3, ge=0)  # follow-up batches at most, per command
    poll_s: float = Field(15.0, gt=0)  # the first wait between polls; it grows 1.5x per poll
    poll_max_s: float = Field(300.0, gt=0)
    # OpenAI's limits per input file: 50,000 requests and 200 MB
    max_requests: int = Field(50_000, ge=1, le=50_000)
    max_bytes: int = Field(200_000_000, ge=1024, le=200_000_000)


class SampleConfig(StrictModel):
    """What `promptdistill sample` asks for."""

    persona: str
    n: int = Field(ge=1)
    seed: int = 0
    include_heldout: bool = True
    # where the persona was looked for first (`--data-dir`), so later stages find it again
    data_dir: str | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    # issue #13: ask the endpoint for the top-K logprobs of every answer token (OpenAI allows
    # up to 20, vLLM up to its --max-logprobs), stored beside each sample for `train --objective kd`
    logprobs: int | None = Field(None, ge=1, le=100)
    # issue #14: conversations of this many user turns; after each teacher answer, the teacher
    # as a user simulator (sampling/turns.py) writes the next user message
    turns: int = Field(1, ge=1, le=32)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    # USD per million tokens at online prices, for the summary's cost (sampling/cost.py knows a
    # few models' list prices); the Batch API costs half
    price_in: float | None = Field(None, ge=0)
    price_out: float | None = Field(None, ge=0)

    # issue #17: answers to prompts with a gold answer are graded (sampling/correct.py); with
    # keep "correct" the wrong ones stay in samples.jsonl but not in the datums, and a training
    # prompt is asked again, up to `attempts` times in all, until one answer is right
    keep: Literal["all", "correct"] = "all"
    attempts: int = Field(1, ge=1, le=100)
    answer_pattern: str = DEFAULT_ANSWER_PATTERN


class PromptWriteConfig(StrictModel):
    """What `promptdistill prompts generate` asks the teacher for (issue #14)."""

    persona: str
    n: int = Field(ge=1)
    data_dir: str | None = None
    topics: list[str] = Field(default_factory=list)  # empty: the prompt set's categories
    per_request: int = Field(8, ge=1, le=50)  # user messages asked for in one request
    # a new prompt whose MiniLM cosine similarity to a kept one reaches this is a near duplicate
    threshold: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = 0
    max_requests: int | None = Field(None, ge=1)  # default: enough for n, three times over
    sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(temperature=1.0, max_tokens=640)
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)


class StudentConfig(StrictModel):
    model: str = "smollm2-135m"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    # issue #17: the base weights in 4-bit nf4 (QLoRA; models/quantize.py); dtype is then the
    # compute dtype
    quantize: Literal["none", "4bit"] = "none"


class DatumConfig(StrictModel):
    """How teacher conversations become training examples."""

    max_len: int = Field(1024, ge=8)
    overlong: Literal["truncate", "drop"] = "truncate"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # issue #13: teacher answers that loop (the same word 4-gram three or more times) or are
    # empty are dropped and counted, unless this is set
    keep_loops: bool = False


class TrainConfig(StrictModel):
    epochs: float | None = Field(2.0, gt=0)
    steps: int | None = Field(None, ge=1)
    lr: float = Field(5e-4, gt=0)
    lora_r: int = Field(16, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str = "all-linear"
    batch_tokens: int = Field(4096, ge=16)
    grad_accum: int = Field(1, ge=1)
    warmup: int = Field(10, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    save_every: int = Field(50, ge=1)
    eval_every: int = Field(25, ge=1)
    seed: int = 0
    # issue #5: validation uses at most this many val examples (a fixed, stable subset), so an
    # eval every N steps stays cheap on CPU; "auto" batching picks padding-free packing only
    # where FlashAttention makes it pay (see promptdistill/batching.py)
    eval_examples: int = Field(256, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    batching: Literal["auto", "pad", "pack"] = "auto"
    # issue #13: what the student learns from (training/objectives.py)
    # - sft: the teacher's sampled tokens (weighted NLL);
    # - kd: the teacher's next-token distribution at every answer token (forward KL), plus
    #   ce_weight x the NLL and hidden_weight x an MSE on the last hidden states;
    # - onpolicy: the student answers the prompts itself and the teacher scores every token
    #   (reverse KL); a share onpolicy_fraction of each step, the rest is kd.
    objective: Literal["sft", "kd", "onpolicy"] = "sft"
    ce_weight: float = Field(0.0, ge=0.0)
    hidden_weight: float = Field(0.0, ge=0.0)
    # kd from an endpoint's top K logprobs: the mass outside them is one more bucket (TRL's
    # `loss_add_tail`), or the top K are renormalised (tinker-cookbook's sdft.py)
    kd_tail: Literal["bucket", "renorm"] = "bucket"
    onpolicy_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # another local model as the teacher (it must share the student's tokenizer); None: the
    # run's teacher (the student's own base model with the system prompt, by default)
    teacher_model: str | None = None


# --------------------------------------------------------------------------- eval (issue #6)


class JudgeConfig(StrictModel):
    """The LLM judge of persona fidelity. base_url/model None: the run's teacher endpoint."""

    enabled: bool = True
    base_url: str | None = None
    model: str | None = None
    # malformed replies are asked again this many times, then the score is recorded as missing
    max_retries: int = Field(default=2, ge=0)
    http_retries: int = Field(default=4, ge=0)
    retry_temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=64, ge=1)
    concurrency: int = Field(default=8, ge=1)
    # generous: a request that times out is still computed by the server, and its retry adds
    # the same work again (an overloaded local judge then never catches up)
    timeout_s: float = Field(default=600.0, gt=0)
    seed: int = 0


class EvalConfig(StrictModel):
    """What `promptdistill eval` measures. None: take it from RUN/config.yaml."""

    base_url: str | None = None  # teacher endpoint for latency (and the default judge)
    model: str | None = None
    api_key_env: str | None = None
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    price_in: float | None = Field(default=None, ge=0)  # USD per million input tokens
    price_out: float | None = Field(default=None, ge=0)  # USD per million output tokens
    max_heldout: int | None = Field(default=None, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    seed: int = 0
    answer_pattern: str = DEFAULT_ANSWER_PATTERN
    batch_size: int = Field(default=32, ge=1)
    latency_requests: int = Field(default=3, ge=0)  # single-stream requests timed per model
    # train prompts whose base answers (with their teacher answers) train the classifier
    classifier_train: int = Field(default=128, ge=0)
    # student and base in 4-bit or not; None: as the student was trained (issue #17)
    quantize: Literal["none", "4bit"] | None = None


class CompareConfig(StrictModel):
    """What `promptdistill compare` changes on top of the run's recorded configuration.

    None: take it from RUN/config.yaml (the teacher and sampling of `sample`, the student of
    `train`); `/temp`, `/max` and `/seed` change the sampling during the session.
    """

    base_url: str | None = None  # teacher endpoint; None and none recorded: the local teacher
    model: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    seed: int | None = None
    base: bool = False  # start with the base-model column shown
    quantize: Literal["none", "4bit"] | None = None  # None: as the student was trained (#17)
