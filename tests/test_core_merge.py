"""The one configuration merge: layers lowest first, flags not given never override, `--steps`
and `--epochs` replace each other, and errors name the flag or the file's line."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptdistill.core.config import TrainConfig
from promptdistill.core.errors import UserError
from promptdistill.core.merge import merge, validate
from promptdistill.core.yamlio import read_yaml


def test_layers_merge_deeply_and_none_is_not_given() -> None:
    out = merge(
        {"train": {"lr": 1e-3, "seed": 1}, "sample": {"n": 10}},
        None,
        {"train": {"lr": None, "seed": 2}},
    )
    assert out == {"train": {"lr": 1e-3, "seed": 2}, "sample": {"n": 10}}


def test_steps_and_epochs_replace_each_other() -> None:
    assert merge({"epochs": 2.0}, {"steps": 8}) == {"epochs": None, "steps": 8}
    assert merge({"steps": 8}, {"epochs": 3.0}) == {"steps": None, "epochs": 3.0}
    assert merge({}, {"steps": 8, "epochs": 1.0}) == {"steps": 8, "epochs": 1.0}  # one layer
    cfg = validate(TrainConfig, merge({"epochs": 2.0}, {"steps": 8}))
    assert cfg.steps == 8 and cfg.epochs is None


def test_errors_name_the_flag_or_the_file_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^--lora-r: "):
        validate(TrainConfig, {"lora_r": 0})
    f = tmp_path / "run.yaml"
    f.write_text("lr: 0.1\nlora_r: -3\n")
    data, node = read_yaml(f)
    with pytest.raises(UserError, match=r"run.yaml:2: field 'lora_r'"):
        validate(TrainConfig, data, file=f, node=node)
