"""The CPU demo's synthetic task: column addition that needs its reasoning trace.

Two-digit additions whose traces walk the columns with carries. A model that has not learned
the column procedure answers almost never correctly (about 1 in 180 by chance), while a tiny
transformer learns it in a few minutes on two CPU cores, so the demo shows accuracy moving.
Everything is generated from a seed: the same files on every machine, no downloads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TASK_VERSION = "addition-v4"  # v4: test problems carry subject / level


def addition_example(a: int, b: int) -> dict:
    """One problem with its reasoning trace and ground truth, in the SFT-trace format."""
    ones_a, tens_a = a % 10, a // 10
    ones_b, tens_b = b % 10, b // 10
    ones = ones_a + ones_b
    carry = ones // 10
    tens = tens_a + tens_b + carry
    total = a + b
    # Restating the numbers first turns the long-range digit lookups into a verbatim copy plus
    # short-range lookups, which a tiny model learns much sooner.
    steps = [f"{a} + {b}: ones {ones_a} + {ones_b} = {ones}, write {ones % 10} carry {carry}."]
    steps.append(f"tens {tens_a} + {tens_b} + {carry} = {tens}, write {tens}.")
    # Spelling out how the written digits join makes the answer a copy of the trace's last number.
    steps.append(f"{tens} then {ones % 10} gives {total}.")
    reasoning = " " + " ".join(steps)
    return {
        "problem": f"What is {a} + {b}?",
        "reasoning": reasoning,
        "answer": str(total),
        # MATH-style labels, so the demo's summaries show the per-subject / per-level breakdowns too.
        "subject": "Carry" if carry else "No carry",
        "level": "Level 2" if total >= 100 else "Level 1",
    }


def split_problems(seed: int = 0, num_test: int = 200) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """All ordered pairs of two-digit numbers, shuffled; the test pairs are never trained on."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    return pairs[num_test:], pairs[:num_test]


def write_task_files(
    directory: Path, prompt_template: str, seed: int = 0, num_train: int = 6000, num_test: int = 200
) -> None:
    """train.jsonl holds SFT traces {prompt, response, ground_truth} like the real MATH traces;
    test.jsonl holds problems {problem, answer, subject, level} for generation-based evaluation."""
    from hf_sft.data.prompts import format_prompt

    train_pairs, test_pairs = split_problems(seed, num_test)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "train.jsonl", "w") as f:
        for a, b in train_pairs[:num_train]:
            ex = addition_example(a, b)
            record = {
                "prompt": format_prompt(prompt_template, ex["problem"]),
                "response": f"{ex['reasoning']} </think> <answer> {ex['answer']} </answer>",
                "ground_truth": ex["answer"],
            }
            f.write(json.dumps(record) + "\n")
    with open(directory / "test.jsonl", "w") as f:
        for a, b in test_pairs:
            ex = addition_example(a, b)
            f.write(json.dumps({k: ex[k] for k in ("problem", "answer", "subject", "level")}) + "\n")
