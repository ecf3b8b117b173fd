"""The one configuration merge: layers of settings, lowest first, into one validated model.

Every command resolves its configuration the same way: `promptdistill run` merges the defaults,
the persona's sampling block, a `--preset`, a `--config` file and the flags; `train` merges the
run's recorded `train` stage (when resuming) and the flags; `sample` and `compare` merge the
persona's or the run's recorded settings and the flags. A flag the user did not give is None and
never overrides a lower layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from promptdistill.core.errors import UserError
from promptdistill.core.yamlio import describe_validation_error

M = TypeVar("M", bound=BaseModel)

# Keys that replace each other inside one mapping: a layer that sets `steps` drops the `epochs`
# of the layers below it, and the other way round (a run trains for one or the other).
EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({"steps", "epochs"}),)


def merge(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Deep-merge `layers`, lowest first. None values (flags not given) are skipped."""
    out: dict[str, Any] = {}
    for layer in layers:
        if layer:
            out = _merge_two(out, layer)
    return out


def _merge_two(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            below = out.get(key)
            out[key] = _merge_two(below if isinstance(below, Mapping) else {}, value)
            continue
        for group in EXCLUSIVE:
            if key in group:
                for other in group - {key}:
                    if top.get(other) is None:  # unless this same layer sets both
                        out[other] = None
        out[key] = value
    return out


def validate(
    model: type[M],
    data: Mapping[str, Any],
    *,
    file: Path | None = None,
    node: yaml.Node | None = None,
) -> M:
    """`model` built from `data`, or a one-line UserError that names what is wrong.

    With `file` (and the YAML `node` tree read from it) the error names `file:line` and the
    field; without, the value came from a flag, and the error names the flag (`--lora-r`).
    """
    try:
        return model.model_validate(dict(data))
    except ValidationError as e:
        if file is not None:
            raise UserError(describe_validation_error(file, e, node)) from None
        first = e.errors()[0]
        names = [p for p in first["loc"] if isinstance(p, str)]
        flag = "--" + (names[-1] if names else "option").replace("_", "-")
        raise UserError(f"{flag}: {first['msg']}") from None
