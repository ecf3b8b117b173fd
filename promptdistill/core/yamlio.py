"""Read a YAML file into a pydantic model, with errors that name the file, field and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from promptdistill.core.errors import UserError
from promptdistill.core.io import read_text

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse `path`, returning the data and the node tree (for line numbers)."""
    text = read_text(path)
    try:
        # libyaml's C loader when present: every command reads a few YAML files at start-up
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        node = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise UserError(_syntax_error(path, e, len(text.rstrip()))) from None
    return data, node


def _syntax_error(path: Path, e: yaml.YAMLError, size: int) -> str:
    """`path:line: YAML syntax error: ...`, at the line to fix: for a quote or bracket that is
    never closed, the line where it opens (the parser only notices at the end of the file,
    `size` characters in)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context, opened = getattr(e, "context", None), getattr(e, "context_mark", None)
    at_end = "end of stream" in problem or (mark is not None and mark.index >= size)
    if opened is not None and context and at_end and mark is not None and mark.line > opened.line:
        what = context.removeprefix("while scanning ").removeprefix("while parsing ")
        return (
            f"{path}:{opened.line + 1}: YAML syntax error: {what} opened here is never "
            "closed (the file ends first); close it on this line"
        )
    where = f":{mark.line + 1}" if mark is not None else ""
    return f"{path}{where}: YAML syntax error: {problem}"


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree to a 1-based line."""
    line = None if node is None else node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == key]
            if not match:
                # the key is missing or unknown: point at the key itself if it exists
                keys = [k for k, _ in node.value if k.value == key]
                return keys[0].start_mark.line + 1 if keys else line
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return line
            node = node.value[key]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def describe_validation_error(path: Path, err: ValidationError, node: yaml.Node | None) -> str:
    first = err.errors()[0]
    # pydantic adds union-member names ("str", "SlotRecord") to loc; users never wrote them
    loc = tuple(p for p in first["loc"] if isinstance(p, int) or p[:1].islower() or p == "")
    field = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(node, loc)
    where = f"{path}:{line}" if line else f"{path}"
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "extra_forbidden":
        msg = "unknown field (check its spelling)"
    elif first["type"] == "value_error":  # our own validators' words, without pydantic's tag
        msg = msg.removeprefix("Value error, ")
    more = len(err.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: field '{field}': {msg}{tail}"


def load_model(path: Path, model: type[M]) -> M:
    data, node = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping of fields at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(describe_validation_error(path, e, node)) from None


def field_line(path: Path, loc: tuple[int | str, ...]) -> str:
    """`path:line` for a location found invalid after validation (e.g. an unknown slot)."""
    try:
        _, node = read_yaml(path)
    except UserError:
        return str(path)
    line = _line_of(node, loc)
    return f"{path}:{line}" if line else str(path)
