"""From a data source to the trainer's inputs: load, check, format, tokenise.

Sources are a local JSONL file, a hub dataset id, or ``builtin:NAME``. Three record formats
are understood and turned into one shape, ``{prompt, response, problem, ground_truth}``:

- SFT traces ``{prompt, response[, ground_truth]}`` whose prompt is already formatted;
- GSM8K ``{question, answer}`` whose answer ends in ``#### N``;
- MATH ``{problem, solution}`` (answer in the last ``\\boxed{}``) or ``{problem, answer}``.

Tokenisation runs through ``datasets.map`` with explicit fingerprints built from the
source's fingerprint, the tokenizer's content and the options, so a second identical run
loads the cached Arrow files instead of re-tokenising.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset

from hf_sft.data import builtin
from hf_sft.core import encode_prompt_and_output
from hf_sft.grading.lenient_normalize import last_boxed
from hf_sft.data.prompts import format_prompt, load_template

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = "1"
FORMATS = {
    "sft": ("prompt", "response"),
    "gsm8k": ("question", "answer"),
    "math_solution": ("problem", "solution"),
    "math_answer": ("problem", "answer"),
}


class DataFormatError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


# ---------------------------------------------------------------------------------------------
# Loading and checking


def detect_format(keys, where: str) -> str:
    for name, required in FORMATS.items():
        if all(k in keys for k in required):
            return name
    expected = " or ".join("{" + ", ".join(r) + "}" for r in FORMATS.values())
    raise DataFormatError(f"{where}: record has fields {sorted(keys)}; expected {expected}")


def check_jsonl(path: Path) -> str:
    """Read every line once before anything heavy happens; return the detected format."""
    fmt = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
            line_fmt = detect_format(record.keys(), where)
            if fmt is None:
                fmt = line_fmt
            elif line_fmt != fmt:
                raise DataFormatError(f"{where}: record is in {line_fmt} format but earlier lines are {fmt}")
            for field in FORMATS[fmt]:
                value = record[field]
                if not isinstance(value, str):
                    raise DataFormatError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
                if not value.strip():
                    raise DataFormatError(f"{where}: field '{field}' is empty")
    if fmt is None:
        raise DataFormatError(f"{path}: no records")
    return fmt


def load_records(source: str, split: str = "train") -> tuple[Dataset, str]:
    """A raw dataset and its format; local files are checked line by line first."""
    resolved = builtin.resolve(source)
    path = Path(resolved)
    if path.is_file():
        fmt = check_jsonl(path)
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        return ds, fmt
    if path.suffix in (".jsonl", ".json") or resolved.startswith((".", "/")):
        raise DataFormatError(f"data file not found: {resolved}")
    ds = datasets.load_dataset(resolved, split=split)
    return ds, detect_format(ds.column_names, f"{resolved} [{split}]")


# ---------------------------------------------------------------------------------------------
# Formatting into prompt/response pairs

_GSM8K_CALC = re.compile(r"<<[^>]*>>")


def target_text(reasoning: str, answer: str) -> str:
    """The response the r1_zero prompt expects: reasoning, then the answer block."""
    return f" {reasoning.strip()} </think> <answer> {answer.strip()} </answer>"


def to_prompt_response(example: dict, fmt: str, template: str) -> dict:
    """One record -> {prompt, response, problem, ground_truth} (response empty for answer-only data)."""
    if fmt == "sft":
        prompt, response = example["prompt"], example["response"]
        return {"prompt": prompt, "response": response, "problem": prompt,
                "ground_truth": str(example.get("ground_truth") or "")}
    if fmt == "gsm8k":
        reasoning, _, final = example["answer"].rpartition("####")
        answer = final.strip().replace(",", "")
        reasoning = _GSM8K_CALC.sub("", reasoning)
        problem = example["question"]
        return {"prompt": format_prompt(template, problem), "response": target_text(reasoning, answer),
                "problem": problem, "ground_truth": answer}
    problem = example["problem"]
    if fmt == "math_solution":
        solution = example["solution"]
        answer = last_boxed(solution) or ""
        return {"prompt": format_prompt(template, problem), "response": target_text(solution, answer),
                "problem": problem, "ground_truth": answer}
    return {"prompt": format_prompt(template, problem), "response": "", "problem": problem,
            "ground_truth": example["answer"]}


def tokenizer_fingerprint(tokenizer) -> str:
    """A content hash of the tokenizer, stable across processes (unlike hashing the object)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token])
    return hashlib.sha256((content + extra).encode()).hexdigest()[:16]


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Tokenising


def _tokenize_batch(batch: dict, tokenizer, max_length: int, truncate: bool, append_eos: bool) -> dict:
    """Shifted input_ids/labels/response_mask per example; over-long rows become empty (then dropped)."""
    responses = batch["response"]
    if append_eos:
        responses = [r + tokenizer.eos_token for r in responses]
    out = {"input_ids": [], "labels": [], "response_mask": [], "num_response_tokens": [], "truncated": []}
    for ids, n_prompt in encode_prompt_and_output(batch["prompt"], responses, tokenizer):
        truncated = False
        if len(ids) > max_length:
            if truncate and n_prompt < max_length:
                ids, truncated = ids[:max_length], True
            else:
                ids = []
        mask = [i >= n_prompt for i in range(len(ids))]
        out["input_ids"].append(ids[:-1])
        out["labels"].append(ids[1:])
        out["response_mask"].append(mask[1:])
        out["num_response_tokens"].append(sum(mask[1:]))
        out["truncated"].append(truncated)
    return out


@dataclass
class PreparedData:
    train: Dataset
    dropped_overlong: int
    truncated: int


def select_subset(ds: Dataset, num_examples: int | None, seed: int, where: str) -> Dataset:
    """Shuffle with a fixed seed, then take a prefix: subsets of one seed are nested."""
    if num_examples is None:
        return ds
    if num_examples > len(ds):
        raise DataFormatError(f"{where}: asked for {num_examples} examples but the dataset has only {len(ds)}")
    return ds.shuffle(seed=seed).select(range(num_examples))


def prepare_train_dataset(data_args, tokenizer) -> PreparedData:
    """The trainer's dataset: columns input_ids, labels, response_mask (and lengths for grouping)."""
    if data_args.train_data is None:
        raise DataFormatError("the recipe sets no train_data")
    if data_args.overlong_policy not in ("drop", "truncate"):
        raise DataFormatError(f"overlong_policy must be 'drop' or 'truncate', got {data_args.overlong_policy!r}")
    raw, fmt = load_records(data_args.train_data, data_args.train_split)
    if fmt == "math_answer":
        raise DataFormatError(f"{data_args.train_data}: records have an answer but no solution or response to "
                              "train on; use {problem, solution} or {prompt, response} data for training")
    raw = select_subset(raw, data_args.num_train_examples, data_args.shuffle_seed, data_args.train_data)
    template = load_template(data_args.prompt_template) if fmt != "sft" else ""
    base_fp = raw._fingerprint
    formatted = raw.map(
        to_prompt_response,
        fn_kwargs={"fmt": fmt, "template": template},
        remove_columns=raw.column_names,
        new_fingerprint=_fingerprint("format", PREPROCESS_VERSION, base_fp, fmt, template),
        desc="Formatting",
    )
    tok_fp = tokenizer_fingerprint(tokenizer)
    truncate = data_args.overlong_policy == "truncate"
    tokenized = formatted.map(
        _tokenize_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "max_length": data_args.max_length, "truncate": truncate,
                   "append_eos": data_args.append_eos},
        remove_columns=formatted.column_names,
        num_proc=data_args.preprocessing_num_workers,
        new_fingerprint=_fingerprint("tokenize", PREPROCESS_VERSION, formatted._fingerprint, tok_fp,
                                     data_args.max_length, truncate, data_args.append_eos),
        desc="Tokenizing",
    )
    n_truncated = sum(tokenized["truncated"])
    kept = tokenized.filter(
        lambda n: n > 0, input_columns="num_response_tokens",
        new_fingerprint=_fingerprint("keep", tokenized._fingerprint), desc="Dropping over-long",
    )
    dropped = len(tokenized) - len(kept)
    if dropped or n_truncated:
        logger.warning("%s: %d examples over max_length=%d were dropped, %d truncated (overlong_policy=%s)",
                       data_args.train_data, dropped, data_args.max_length, n_truncated,
                       data_args.overlong_policy)
    if len(kept) == 0:
        raise DataFormatError(f"{data_args.train_data}: no example fits max_length={data_args.max_length}")
    return PreparedData(kept.remove_columns(["truncated"]), dropped, n_truncated)


EVAL_BREAKDOWN_COLUMNS = ("subject", "level")


def load_eval_problems(source: str, split: str, template_name: str, num_examples: int | None = None,
                       seed: int = 0) -> Dataset:
    """Held-out problems as {prompt, problem, ground_truth}, for generation-based evaluation.

    MATH's ``subject`` and ``level`` columns are kept when the data has them: summaries break results down by them.
    """
    raw, fmt = load_records(source, split)
    raw = select_subset(raw, num_examples, seed, source)
    template = load_template(template_name) if fmt != "sft" else ""
    keep = [c for c in EVAL_BREAKDOWN_COLUMNS if c in raw.column_names]
    ds = raw.map(
        to_prompt_response,
        fn_kwargs={"fmt": fmt, "template": template},
        remove_columns=[c for c in raw.column_names if c not in keep],
        new_fingerprint=_fingerprint("eval-format", PREPROCESS_VERSION, raw._fingerprint, fmt, template, *keep),
        desc="Formatting eval problems",
    )
    return ds.remove_columns(["response"])
