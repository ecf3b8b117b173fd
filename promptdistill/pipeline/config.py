"""What `promptdistill run` runs with: every stage's configuration, and the presets.

Configuration comes from, lowest first: the defaults, the persona's sampling block, a preset
(`--preset demo`), a run config file (`--config FILE`, sections `sample`, `student`, `datums`,
`train`, `eval`), then the flags; merged by core/merge.py. The resolved result is recorded in
RUN/config.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from promptdistill.core.config import (
    DatumConfig,
    EvalConfig,
    SampleConfig,
    StrictModel,
    StudentConfig,
    TrainConfig,
)
from promptdistill.core.errors import UserError
from promptdistill.core.merge import merge, validate
from promptdistill.core.yamlio import read_yaml

# Presets are partial configurations applied on top of the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # The README's main job: a real persona distillation on a 2-core laptop CPU in under 15
    # minutes. The local teacher is decode-bound (~0.37 req/s at 96 tokens, the persona prompt
    # held in its prefix cache), so sampling is most of the time (README). 40 held-out prompts
    # give the report stable numbers. Judge off: a 135M judge's scores are noise, and the
    # embedding classifier measures persona fidelity offline.
    # Objective kd in 1,024-token batches: in the same training time as sft, on the same
    # samples, ~22 smaller steps instead of 6 brought the held-out KL(teacher || student) to
    # ~0.46 of the base's (sft: 1.01; kd in the default 4,096-token batches: 0.63) and the
    # student's loop rate below the teacher's (sft: nearly twice it); benchmarks/objectives.py,
    # docs/benchmarks.md "Objectives" (issue #13). On CPU a step costs about its tokens, so
    # smaller batches buy more updates for the same time. 4 epochs instead of 2 (~1.5 more
    # minutes) took the KL ratio to 0.37 on beethoven and 0.28 on nimbus-support (from 0.46
    # and 0.40; medians of 3 seeds), docs/benchmarks.md "Four epochs".
    "demo": {
        "sample": {"n": 120, "sampling": {"max_tokens": 96, "temperature": 0.7}},
        # a 2-step warm-up: the default 10 would be a quarter of the run
        "train": {"objective": "kd", "epochs": 4, "batch_tokens": 1024, "warmup": 2},
        "eval": {"max_heldout": 40, "max_new_tokens": 96, "judge": {"enabled": False}},
    },
}


class RunConfig(StrictModel):
    """Every stage's configuration, as `promptdistill run` resolves it."""

    persona: str
    preset: str | None = None
    sample: SampleConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    datums: DatumConfig = Field(default_factory=DatumConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stream: bool = False  # train while sampling, one epoch as samples arrive (stream.py)


def resolve_config(
    persona: str,
    preset: str | None,
    config_file: Path | None,
    flags: dict[str, Any],
    persona_sampling: dict[str, Any],
) -> RunConfig:
    """defaults < persona's sampling block < preset < config file < flags."""
    file_data: dict[str, Any] = {}
    file_node = None
    if config_file is not None:
        data, file_node = read_yaml(config_file)
        if not isinstance(data, dict):
            raise UserError(f"{config_file}: expected a mapping of stage configurations")
        file_data = data
        preset = preset or file_data.get("preset")
    if preset is not None and preset not in PRESETS:
        raise UserError(f"--preset {preset}: unknown preset; known: {', '.join(PRESETS)}")
    layers = merge(
        {"sample": {"persona": persona, "n": 1000, "sampling": persona_sampling}},
        without_unusable_objective(PRESETS.get(preset or "", {}), merge(file_data, flags)),
        file_data,
        flags,
        {"persona": persona, "preset": preset, "sample": {"persona": persona}},
    )
    return validate(RunConfig, layers, file=config_file, node=file_node)


def without_unusable_objective(preset: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """The preset, less its `kd` objective when the user's teacher is an endpoint sampled
    without --logprobs: there is no teacher distribution to learn from, so the preset trains
    sft there (the header of `train` says which). An objective the user chose is kept, and
    fails with its one-line reason if it cannot work."""
    sample = chosen.get("sample") or {}
    remote = bool((sample.get("teacher") or {}).get("base_url"))
    if not remote or sample.get("logprobs") or "objective" in (chosen.get("train") or {}):
        return preset
    train = {k: v for k, v in (preset.get("train") or {}).items() if k != "objective"}
    return {**preset, "train": train}
