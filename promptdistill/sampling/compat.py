"""May new samples join a run's old ones? The sample stage's recorded configuration, compared.

A run never mixes outputs of different configurations: `sample` refuses to add answers made
with another model, temperature, length, seed, persona or system prompt (issue #16 for a
persona named once by name and once by path).
"""

from __future__ import annotations

from typing import Any

from promptdistill.clients.endpoint import normalize_base_url
from promptdistill.core.answers import DEFAULT_ANSWER_PATTERN
from promptdistill.core.config import SampleConfig
from promptdistill.core.errors import UserError
from promptdistill.core.redact import redact_url
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader
from promptdistill.personas import LoadedPersona, data_roots, same_persona, teacher_system

STAGE = "sample"
# fields of the recorded stage config that must match for a run to grow
_MUST_MATCH = ("persona", "seed", "teacher.model", "sampling.temperature", "sampling.top_p",
               "sampling.max_tokens", "sampling.seed", "logprobs", "turns",
               "answer_pattern")  # fmt: skip  # issue #17: the samples' correct flags


# what a config.yaml written before a setting existed means by leaving it out
_BEFORE = {"turns": 1, "answer_pattern": DEFAULT_ANSWER_PATTERN}


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
    return _BEFORE.get(dotted) if d is None else d


def recorded_config(config: SampleConfig) -> dict[str, Any]:
    """What config.yaml keeps: the resolved config, URL without credentials, no key."""
    data = config.model_dump(mode="json")
    if config.teacher.base_url:
        data["teacher"]["base_url"] = redact_url(normalize_base_url(config.teacher.base_url))
    for e in data["teacher"]["endpoints"]:  # several endpoints (issue #15)
        e["base_url"] = redact_url(normalize_base_url(e["base_url"]))
    return data


def check_compatible(run: RunDir, config: SampleConfig, persona: LoadedPersona) -> None:
    """Refuse to add samples made under a different configuration to an existing run."""
    old = run.stage_config(STAGE)
    new = recorded_config(config)
    if old is not None:
        for key in _MUST_MATCH:
            was, now = _get(old, key), _get(new, key)
            # the same persona file, named once by name and once by path (issue #16)
            roots = data_roots(config.data_dir)
            if key == "persona" and was is not None and same_persona(str(was), str(now), roots):
                continue
            if was != now:
                flag = "--" + key.split(".")[-1].replace("_", "-")
                raise UserError(
                    f"{run.config_path}: this run was sampled with {key}={was!r}, "
                    f"not {now!r}; samples from different configurations must not "
                    f"be mixed: pass the same {flag if key != 'persona' else 'persona'} "
                    "or use a new --run directory"
                )
    # the persona file may have been edited since: compare the system prompt itself, with the
    # teacher instructions (issue #17)
    for record in SampleReader(run.samples).records():
        messages = record.get("messages") or []
        system = messages[0] if messages and messages[0].get("role") == "system" else None
        now = teacher_system(persona, record.get("prompt_set"))
        if system is not None and system.get("content") != now:
            raise UserError(
                f"{run.samples}: its samples were made with a different system prompt or "
                f"teacher instructions than {persona.path} has now; use a new --run directory"
            )
        break
