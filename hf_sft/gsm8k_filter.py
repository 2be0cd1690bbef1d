"""Keep GSM8K traces whose answer checked arithmetic derives: ``python -m hf_sft.gsm8k_filter IN.jsonl OUT.jsonl``.

Why not ``hf_sft.filter``: a GSM8K trace's final answer *is* its ground truth, so grading it against
itself keeps everything. What can be wrong in a GSM8K trace is its arithmetic, and what can be missing
is the link from the arithmetic to the answer. Each ``<<expr=value>>`` calculator annotation states a
result; this filter recomputes every one with exact fractions (right = the stated value rounded to the
decimals it is written with) and keeps a trace only if no step is wrong and its final ``#### N`` is
the result of one of its steps, i.e. the answer is derived by checked arithmetic. Annotations that are
not plain arithmetic (units, %, powers) are counted as unverifiable and do not drop a trace. Kept lines
are copied verbatim; statistics are printed and saved beside the output as ``OUT.stats.json``.

The expressions come from a data file: ``hf_sft.grading.calculator`` parses them by a small grammar (numbers,
+ - * /, brackets), never evaluates them as code, and refuses long or deeply nested ones, so every parse is bounded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_sft.data.loading import DataFormatError, check_jsonl
from hf_sft.evaluation.results import atomic_write_text
from hf_sft.grading.calculator import ANNOTATION, Unverifiable, check_annotation, number


def trace_verdict(answer: str) -> tuple[str, int]:
    """(verdict, unverifiable annotation count) for one GSM8K ``answer`` field.

    verdict: "wrong_step" (a calculator step states a wrong result), "unchecked_answer" (the final
    ``#### N`` is not the result of any calculator step: nothing checked it) or "ok".
    """
    unverifiable, wrong, results = 0, False, []
    for body in ANNOTATION.findall(answer):
        try:
            wrong |= not check_annotation(body)
            results.append(number(body.rpartition("=")[2]))
        except Unverifiable:
            unverifiable += 1
    if wrong:
        return "wrong_step", unverifiable
    final = number(answer.rpartition("####")[2])
    return ("ok" if final is not None and final in results else "unchecked_answer"), unverifiable


def filter_gsm8k(input_path, output_path) -> dict:
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise DataFormatError(f"input file not found: {input_path}")
    if input_path.resolve() == output_path.resolve():
        raise ValueError("the output must not overwrite the input")
    fmt = check_jsonl(input_path)
    if fmt != "gsm8k":
        raise DataFormatError(f"{input_path}: records are in {fmt} format; this filter needs GSM8K "
                              "{question, answer} records (for SFT traces use python -m hf_sft.filter)")
    kept, total, annotations, unverifiable, unverifiable_traces = [], 0, 0, 0, 0
    verdicts = {"ok": 0, "wrong_step": 0, "unchecked_answer": 0}
    with open(input_path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            total += 1
            answer = json.loads(line)["answer"]
            verdict, n_unverifiable = trace_verdict(answer)
            annotations += len(ANNOTATION.findall(answer))
            unverifiable += n_unverifiable
            unverifiable_traces += n_unverifiable > 0
            verdicts[verdict] += 1
            if verdict == "ok":
                kept.append(line.rstrip("\n"))
    atomic_write_text(output_path, "".join(k + "\n" for k in kept))
    stats = {"input": str(input_path), "output": str(output_path), "original_size": total,
             "filtered_size": len(kept), "retention_rate": round(len(kept) / total, 4) if total else 0.0,
             "dropped_wrong_step": verdicts["wrong_step"], "dropped_unchecked_answer": verdicts["unchecked_answer"],
             "annotations": annotations,
             "unverifiable_annotations": unverifiable, "traces_with_unverifiable_annotations": unverifiable_traces}
    atomic_write_text(output_path.with_name(output_path.name.removesuffix(".jsonl") + ".stats.json"),
                      json.dumps(stats, indent=2) + "\n")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_sft.gsm8k_filter", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="GSM8K records {question, answer} (JSONL)")
    parser.add_argument("output", help="where the kept records go (JSONL); statistics beside it")
    args = parser.parse_args(argv)
    try:
        stats = filter_gsm8k(args.input, args.output)
    except (DataFormatError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
