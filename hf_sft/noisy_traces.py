"""Corrupt a fraction of SFT traces, so the demo has wrong traces to filter out (like real distilled data).

    python -m hf_sft.noisy_traces builtin:addition/train OUT.jsonl [--wrong 0.2] [--format 0.1] [--seed 0]

Why: the demo's builtin traces are all correct, so filtering them is a no-op and the filtered-vs-full
comparison would show nothing. Real reasoning traces distilled from a model are partly wrong; this
makes a demo twin of that: a ``--wrong`` fraction gets a wrong final answer (off by 1 or 10, as a
dropped carry would make it; the ground truth stays right), a ``--format`` fraction loses its closing
``</answer>`` tag (a model trained on those learns not to stop). The rest is copied unchanged, so a
correct filter keeps exactly those. The choice of lines is seeded: same input, same output.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from hf_sft.data import builtin
from hf_sft.data.loading import DataFormatError, check_jsonl
from hf_sft.evaluation.results import atomic_write_text

_ANSWER = re.compile(r"<answer>\s*(-?[0-9]+)\s*</answer>\s*$")


def corrupt(record: dict, kind: str, rng: random.Random) -> dict | None:
    """A corrupted copy (kind: wrong | format), or None when the response has no integer answer block."""
    response = record["response"]
    m = _ANSWER.search(response)
    if m is None:
        return None
    if kind == "wrong":
        wrong = int(m.group(1)) + rng.choice((-10, -1, 1, 10))
        response = response[:m.start(1)] + str(wrong) + response[m.end(1):]
    else:
        response = response[:m.end(1)] + response[m.end(1):].replace("</answer>", "", 1).rstrip()
    return {**record, "response": response}


def make_noisy(source: str, output, wrong: float = 0.2, format_fail: float = 0.1, seed: int = 0) -> dict:
    """Write the noisy copy of ``source`` (a path or builtin:NAME) and return what was changed."""
    if wrong < 0 or format_fail < 0 or wrong + format_fail > 1:
        raise ValueError("--wrong and --format are fractions whose sum is at most 1")
    path = Path(builtin.resolve(source))
    if check_jsonl(path) != "sft":
        raise DataFormatError(f"{path}: needs SFT traces {{prompt, response, ground_truth}}")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    n_wrong, n_format = round(wrong * len(records)), round(format_fail * len(records))
    kinds = {i: "wrong" for i in order[:n_wrong]} | {i: "format" for i in order[n_wrong:n_wrong + n_format]}
    counts = {"unchanged": 0, "wrong": 0, "format": 0}
    lines = []
    for i, record in enumerate(records):
        changed = corrupt(record, kinds[i], rng) if i in kinds else None
        counts[kinds[i] if changed else "unchanged"] += 1
        lines.append(json.dumps(changed or record, ensure_ascii=False) + "\n")
    atomic_write_text(Path(output), "".join(lines))
    return {"source": str(path), "output": str(output), "total": len(records), **counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_sft.noisy_traces", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="SFT traces: a JSONL path or builtin:addition/train")
    parser.add_argument("output")
    parser.add_argument("--wrong", type=float, default=0.2, help="fraction given a wrong final answer")
    parser.add_argument("--format", type=float, default=0.1, dest="format_fail",
                        help="fraction that loses its closing </answer>")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        stats = make_noisy(args.source, args.output, args.wrong, args.format_fail, args.seed)
    except (DataFormatError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
