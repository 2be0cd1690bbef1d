"""Generation-based evaluation: generate with a backend, grade, summarise, write results.

Used in three places with the same code: the in-training callback, the standalone
`hf-sft-eval` command, and the vLLM worker process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from statistics import mean

from hf_sft.generation import Generation, GenerationBackend, SamplingSettings
from hf_sft.grader import GradingPool, format_failure_type
from hf_sft.results import write_eval_results

logger = logging.getLogger(__name__)

CATEGORIES = ("correct", "wrong_answer", "format_failure")
FAILURE_TYPES = ("missing_think_close", "missing_answer_open", "missing_answer_close", "incomplete_generation")


@dataclass
class EvalProblems:
    """Held-out problems, already formatted with the prompt template."""

    prompts: list[str]
    problems: list[str]
    ground_truths: list[str]
    dataset: str

    @classmethod
    def from_dataset(cls, ds, dataset_name: str) -> "EvalProblems":
        return cls(list(ds["prompt"]), list(ds["problem"]), [str(g) for g in ds["ground_truth"]], dataset_name)

    def __len__(self) -> int:
        return len(self.prompts)


def categorize(grade) -> str:
    if grade.reward >= 1.0:
        return "correct"
    if grade.format_reward >= 1.0:
        return "wrong_answer"
    return "format_failure"


def build_records(problems: EvalProblems, generations: list[Generation], grades) -> list[dict]:
    records = []
    for i, (gen, grade) in enumerate(zip(generations, grades)):
        category = categorize(grade)
        records.append({
            "index": i,
            "prompt": problems.prompts[i],
            "problem": problems.problems[i],
            "response": gen.text,
            "ground_truth": problems.ground_truths[i],
            "rewards": {"format_reward": grade.format_reward, "answer_reward": grade.answer_reward,
                        "total_reward": grade.reward},
            "metrics": {"token_entropy": gen.token_entropy, "response_length": gen.num_tokens},
            "category": category,
            "failure_type": format_failure_type(gen.text, gen.finish_reason) if category == "format_failure" else None,
            "finish_reason": gen.finish_reason,
            "grading": {"timed_out": grade.timed_out, "error": grade.error},
        })
    return records


def _count(n: int, total: int) -> dict:
    return {"count": n, "percentage": round(100.0 * n / total, 2) if total else 0.0}


def _avg(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(mean(values), 4) if values else None


def summarize(records: list[dict], *, eval_step: int, sampling: SamplingSettings, model: str, dataset: str,
              backend: str, wall_time_s: float) -> dict:
    total = len(records)
    by_cat = {c: [r for r in records if r["category"] == c] for c in CATEGORIES}
    lengths = lambda rs: [r["metrics"]["response_length"] for r in rs]  # noqa: E731
    incorrect = by_cat["wrong_answer"] + by_cat["format_failure"]
    return {
        "eval_step": eval_step,
        "total_examples": total,
        "categorization": {c: _count(len(rs), total) for c, rs in by_cat.items()},
        "metrics": {
            "accuracy": round(len(by_cat["correct"]) / total, 4) if total else 0.0,
            "format_accuracy": round(sum(r["rewards"]["format_reward"] for r in records) / total, 4) if total else 0.0,
            "avg_response_length": _avg(lengths(records)),
            "avg_response_length_correct": _avg(lengths(by_cat["correct"])),
            "avg_response_length_incorrect": _avg(lengths(incorrect)),
            "avg_token_entropy": _avg(r["metrics"]["token_entropy"] for r in records),
        },
        "format_failure_analysis": {
            t: _count(sum(r["failure_type"] == t for r in records), total) for t in FAILURE_TYPES
        },
        "grading": {"timed_out": sum(r["grading"]["timed_out"] for r in records),
                    "errors": sum(r["grading"]["error"] is not None for r in records)},
        "sampling": sampling.to_dict(),
        "model": model,
        "dataset": dataset,
        "backend": backend,
        "wall_time_s": round(wall_time_s, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def run_evaluation(backend: GenerationBackend, problems: EvalProblems, sampling: SamplingSettings,
                   grader: GradingPool, *, eval_step: int, output_dir, model_name: str,
                   reward_fn: str = "r1_zero") -> dict:
    """Generate, grade, write `results/eval_logs/*` under output_dir, and return the summary."""
    start = time.perf_counter()
    generations = backend.generate(problems.prompts, sampling)
    grades = grader.grade([g.text for g in generations], problems.ground_truths, reward_fn=reward_fn,
                          finish_reasons=[g.finish_reason for g in generations])
    records = build_records(problems, generations, grades)
    summary = summarize(records, eval_step=eval_step, sampling=sampling, model=model_name,
                        dataset=problems.dataset, backend=backend.name, wall_time_s=time.perf_counter() - start)
    _, summary_path = write_eval_results(output_dir, eval_step, records, summary)
    m = summary["metrics"]
    logger.info("eval step %d: accuracy %.3f, format accuracy %.3f, avg length %s (%d examples, %.1fs) -> %s",
                eval_step, m["accuracy"], m["format_accuracy"], m["avg_response_length"], len(records),
                summary["wall_time_s"], summary_path)
    return summary


def summary_to_metrics(summary: dict, prefix: str = "eval/") -> dict[str, float]:
    """Flat scalars for trackers."""
    out = {f"{prefix}{k}": v for k, v in summary["metrics"].items() if v is not None}
    for cat, c in summary["categorization"].items():
        out[f"{prefix}{cat}_rate"] = c["percentage"] / 100.0
    for kind, c in summary["format_failure_analysis"].items():
        out[f"{prefix}failure/{kind}"] = c["percentage"] / 100.0
    out[f"{prefix}wall_time_s"] = summary["wall_time_s"]
    return out


def log_generations(backend: GenerationBackend, problems: EvalProblems, sampling: SamplingSettings,
                    grader: GradingPool, reward_fn: str = "r1_zero", log=logger.info) -> dict:
    """Prompt the model on a few problems and log each prompt, response, ground truth, rewards and
    mean token entropy, plus the average response length overall, for correct and for incorrect."""
    generations = backend.generate(problems.prompts, sampling)
    grades = grader.grade([g.text for g in generations], problems.ground_truths, reward_fn=reward_fn,
                          finish_reasons=[g.finish_reason for g in generations])
    records = build_records(problems, generations, grades)
    for r in records:
        log("[%s] prompt=%r\n  response=%r\n  ground_truth=%r rewards=%s token_entropy=%s",
            r["category"], r["problem"], r["response"], r["ground_truth"], r["rewards"],
            r["metrics"]["token_entropy"])
    lengths = [r["metrics"]["response_length"] for r in records]
    correct = [r["metrics"]["response_length"] for r in records if r["category"] == "correct"]
    incorrect = [r["metrics"]["response_length"] for r in records if r["category"] != "correct"]
    stats = {"avg_response_length": _avg(lengths), "avg_response_length_correct": _avg(correct),
             "avg_response_length_incorrect": _avg(incorrect)}
    log("log_generations: %s", stats)
    return {"examples": records, **stats}
