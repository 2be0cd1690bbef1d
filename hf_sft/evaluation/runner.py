"""Generation-based evaluation: generate with a backend, grade, summarise, write results.

Used in three places with the same code: the in-training callback, the standalone
`hf-sft-eval` command, and the vLLM worker process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from statistics import mean

from hf_sft.evaluation import stats as eval_stats
from hf_sft.generation.base import Generation, GenerationBackend, SamplingSettings
from hf_sft.grading.pool import GradingPool
from hf_sft.grading.registry import CATEGORIES, FAILURE_TYPES, categorize, reward_spec, voting_key
from hf_sft.evaluation.results import write_eval_results

logger = logging.getLogger(__name__)

@dataclass
class EvalProblems:
    """Held-out problems, already formatted with the prompt template (MATH's subject / level when known)."""

    prompts: list[str]
    problems: list[str]
    ground_truths: list[str]
    dataset: str
    subjects: list[str | None] | None = None
    levels: list[str | None] | None = None

    @classmethod
    def from_dataset(cls, ds, dataset_name: str) -> "EvalProblems":
        column = lambda name: list(ds[name]) if name in ds.column_names else None  # noqa: E731
        return cls(list(ds["prompt"]), list(ds["problem"]), [str(g) for g in ds["ground_truth"]], dataset_name,
                   subjects=column("subject"), levels=column("level"))

    def __len__(self) -> int:
        return len(self.prompts)


def build_records(problems: EvalProblems, generations: list[Generation], grades, *, reward_fn: str = "r1_zero",
                  num_samples: int = 1) -> list[dict]:
    """One record per generation; with ``num_samples`` k, generations come k per problem, in problem order."""
    records = []
    alternate = reward_spec(reward_fn).alternate
    for i, (gen, grade) in enumerate(zip(generations, grades)):
        p = i // num_samples
        category = categorize(grade)
        record = {
            "index": i,
            "problem_index": p,
            "sample": i % num_samples,
            "prompt": problems.prompts[p],
            "problem": problems.problems[p],
            "response": gen.text,
            "ground_truth": problems.ground_truths[p],
            "rewards": {"format_reward": grade.format_reward, "answer_reward": grade.answer_reward,
                        "total_reward": grade.reward},
            "metrics": {"token_entropy": gen.token_entropy, "response_length": gen.num_tokens},
            "category": category,
            "failure_type": grade.failure_type if category == "format_failure" else None,
            "finish_reason": gen.finish_reason,
            "grading": {"timed_out": grade.timed_out, "error": grade.error, "reward_fn": reward_fn,
                        "alternate": None if grade.alternate_reward is None else
                        {"reward_fn": alternate, "reward": grade.alternate_reward}},
            "grader_disagreement": grade.alternate_reward is not None and grade.alternate_reward != grade.reward,
        }
        if num_samples > 1:
            record["vote"] = voting_key(gen.text, reward_fn)
        for field, values in (("subject", problems.subjects), ("level", problems.levels)):
            if values is not None and values[p] is not None:
                record[field] = values[p]
        records.append(record)
    return records


def _count(n: int, total: int) -> dict:
    return {"count": n, "percentage": round(100.0 * n / total, 2) if total else 0.0}


def _avg(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(mean(values), 4) if values else None


def summarize(records: list[dict], *, eval_step: int, sampling: SamplingSettings, model: str, dataset: str,
              backend: str, wall_time_s: float, reward_fn: str = "r1_zero") -> dict:
    total = len(records)
    by_cat = {c: [r for r in records if r["category"] == c] for c in CATEGORIES}
    lengths = lambda rs: [r["metrics"]["response_length"] for r in rs]  # noqa: E731
    incorrect = by_cat["wrong_answer"] + by_cat["format_failure"]
    overall = eval_stats.group_stats(records)
    optional = {
        "sampling_metrics": eval_stats.sampling_stats(records, sampling.num_samples),
        "grader_disagreements": eval_stats.disagreements(records),
        "by_subject": eval_stats.breakdown(records, "subject"),
        "by_level": eval_stats.breakdown(records, "level"),
    }
    return {
        "eval_step": eval_step,
        "total_examples": total,
        "categorization": {c: _count(len(rs), total) for c, rs in by_cat.items()},
        "metrics": {
            "accuracy": overall["accuracy"],
            "format_accuracy": overall["format_accuracy"],
            "avg_response_length": _avg(lengths(records)),
            "avg_response_length_correct": _avg(lengths(by_cat["correct"])),
            "avg_response_length_incorrect": _avg(lengths(incorrect)),
            "avg_token_entropy": _avg(r["metrics"]["token_entropy"] for r in records),
        },
        "format_failure_analysis": {
            t: _count(sum(r["failure_type"] == t for r in records), total) for t in FAILURE_TYPES
        },
        "confidence_intervals": {"method": "wilson", "level": 0.95, "accuracy": overall["accuracy_ci95"],
                                 "format_accuracy": overall["format_accuracy_ci95"]},
        **{k: v for k, v in optional.items() if v is not None},
        "grading": {"reward_fn": reward_fn, "timed_out": sum(r["grading"]["timed_out"] for r in records),
                    "errors": sum(r["grading"]["error"] is not None for r in records)},
        "sampling": sampling.to_dict(),
        "model": model,
        "dataset": dataset,
        "backend": backend,
        "wall_time_s": round(wall_time_s, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


PROGRESS_EVERY_S = 30.0


class ThrottledProgress:
    """``(stage, done, total)`` reports passed on to ``sink`` at most once per ``every_s`` (a long eval's
    periodic progress line); the first one ``every_s`` after the start, so a short eval shows none."""

    def __init__(self, sink, every_s: float = PROGRESS_EVERY_S, clock=time.monotonic):
        self.sink, self.every_s, self.clock = sink, every_s, clock
        self.last = clock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.sink(stage, done, total)


def progress_line(step: int, stage: str, done: int, total: int) -> str:
    return f"eval of step {step}: {done}/{total} samples {stage}"


def started_line(step: int, num_problems: int, num_samples: int) -> str:
    return f"eval of step {step} started ({num_problems} problems, {num_samples} sample{'s' if num_samples > 1 else ''} each)"


def done_line(summary: dict, summary_path) -> str:
    """One line per finished eval: accuracy with its 95% interval, format accuracy, speed, time, where it went."""
    m = summary["metrics"]
    lo, hi = summary["confidence_intervals"]["accuracy"] or (0.0, 0.0)
    speed = (summary.get("generation") or {}).get("tokens_per_s")
    return (f"eval of step {summary['eval_step']} done: accuracy {100 * m['accuracy']:.1f}% [{100 * lo:.1f}, "
            f"{100 * hi:.1f}], format {100 * m['format_accuracy']:.1f}%, "
            + (f"{speed:,.0f} tokens/s, " if speed is not None else "")
            + f"{summary['wall_time_s']:.1f} s, results -> {summary_path}")


def run_evaluation(backend: GenerationBackend, problems: EvalProblems, sampling: SamplingSettings,
                   grader: GradingPool, *, eval_step: int, output_dir, model_name: str,
                   reward_fn: str = "r1_zero", on_written=None, progress=None) -> dict:
    """Generate, grade, write `results/eval_logs/*` under output_dir, and return the summary.

    Logs a started and a done line; ``on_written(summary_path)`` learns where the summary went;
    ``progress(stage, done, total)`` ("generated" / "graded") is called as samples finish (default: a
    `ThrottledProgress` logging a line at most every 30 s).
    """
    if progress is None:
        progress = ThrottledProgress(lambda stage, done, total: logger.info(progress_line(eval_step, stage, done, total)))
    start = time.perf_counter()
    k = sampling.num_samples
    logger.info(started_line(eval_step, len(problems), k))
    # k samples of a problem are k copies of its prompt: distinct draws on both backends (hf: one RNG stream
    # through all batches; vLLM: seed + index per request).
    generations = backend.generate([p for p in problems.prompts for _ in range(k)], sampling,
                                   progress=lambda done, total: progress("generated", done, total))
    generation_s = time.perf_counter() - start
    grades = grader.grade([g.text for g in generations], [t for t in problems.ground_truths for _ in range(k)],
                          reward_fn=reward_fn, finish_reasons=[g.finish_reason for g in generations],
                          compare=reward_spec(reward_fn).alternate is not None,
                          progress=lambda done, total: progress("graded", done, total))
    records = build_records(problems, generations, grades, reward_fn=reward_fn, num_samples=k)
    summary = summarize(records, eval_step=eval_step, sampling=sampling, model=model_name, dataset=problems.dataset,
                        backend=backend.name, wall_time_s=time.perf_counter() - start, reward_fn=reward_fn)
    tokens = sum(g.num_tokens for g in generations)
    summary["generation"] = {"seconds": round(generation_s, 3), "tokens": tokens,
                             "tokens_per_s": round(tokens / generation_s, 1) if generation_s > 0 else None}
    _, summary_path = write_eval_results(output_dir, eval_step, records, summary)
    if on_written is not None:
        on_written(str(summary_path))
    logger.info(done_line(summary, summary_path))
    return summary


def summary_to_metrics(summary: dict, prefix: str = "eval/") -> dict[str, float]:
    """Flat scalars for trackers."""
    out = {f"{prefix}{k}": v for k, v in summary["metrics"].items() if v is not None}
    for cat, c in summary["categorization"].items():
        out[f"{prefix}{cat}_rate"] = c["percentage"] / 100.0
    for kind, c in summary["format_failure_analysis"].items():
        out[f"{prefix}failure/{kind}"] = c["percentage"] / 100.0
    out[f"{prefix}wall_time_s"] = summary["wall_time_s"]
    for name in ("accuracy", "format_accuracy"):
        interval = summary.get("confidence_intervals", {}).get(name)
        if interval:
            out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = interval
    for key, value in (summary.get("sampling_metrics") or {}).items():
        if key in ("pass_at_k", "maj_at_k"):
            out[f"{prefix}{key}"] = value
    if summary.get("grader_disagreements"):
        out[f"{prefix}grader_disagreements"] = summary["grader_disagreements"]["count"]
    for field in ("subject", "level"):
        for name, stats in (summary.get(f"by_{field}") or {}).items():
            for metric in ("accuracy", "format_accuracy"):
                out[f"{prefix}{field}/{eval_stats.slug(name)}/{metric}"] = stats[metric]
    return out


def log_generations(backend: GenerationBackend, problems: EvalProblems, sampling: SamplingSettings,
                    grader: GradingPool, reward_fn: str = "r1_zero", log=logger.info) -> dict:
    """Prompt the model on a few problems and log each prompt, response, ground truth, rewards and
    mean token entropy, plus the average response length overall, for correct and for incorrect."""
    generations = backend.generate(problems.prompts, sampling)
    grades = grader.grade([g.text for g in generations], problems.ground_truths, reward_fn=reward_fn,
                          finish_reasons=[g.finish_reason for g in generations])
    records = build_records(problems, generations, grades, reward_fn=reward_fn)
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
