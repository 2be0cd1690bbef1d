"""Plots of how a run's evaluations progress, and of several runs side by side (PNG, matplotlib Agg).

Reads only what a run has on disk: its results/ (through ``hf_sft.evaluation.results``) and, for the
training curves, ``trainer_state.json`` (the run's, or its newest checkpoint's). A run may be half-written
(still training, or killed): a missing or unreadable summary is skipped, a per-example log line that does not
parse is skipped, and a plot with nothing to show is not drawn, so a report can be built at any moment of a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hf_sft.evaluation.results import latest_summaries  # noqa: E402
from hf_sft.training.checkpoints import checkpoint_dirs  # noqa: E402

CATEGORY_COLORS = {"correct": "#2e7d32", "wrong_answer": "#f9a825", "format_failure": "#c62828"}


# ---------------------------------------------------------------- reading a run


def load_train_history(run_dir) -> list[dict]:
    """Training log entries (those with a loss) from trainer_state.json, or the newest checkpoint's."""
    run_dir = Path(run_dir)
    candidates = [run_dir / "trainer_state.json"] + [p / "trainer_state.json" for _, p in checkpoint_dirs(run_dir)]
    for path in candidates:
        try:
            history = json.loads(path.read_text()).get("log_history", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        return [h for h in history if isinstance(h, dict) and "loss" in h and "step" in h]
    return []


def _metric(summaries, key):
    return [s["metrics"].get(key) for s in summaries]


def _steps(summaries):
    return [s["eval_step"] for s in summaries]


def _pct(summary, section, key) -> float:
    return float(summary.get(section, {}).get(key, {}).get("percentage", 0.0))


# ---------------------------------------------------------------- one run


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _line(ax, x, y, **kw):
    """Plot y against x, leaving out points whose value is missing (None)."""
    pts = [(a, b) for a, b in zip(x, y) if b is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", **kw)


def _interval_line(ax, x, y, intervals, dodge: float = 0.0, **kw):
    """``_line`` with error bars from [low, high] intervals (Wilson 95%) where a point has one; ``dodge``
    shifts the points by that many hundredths of the step range, so overlapping bars stay readable."""
    span = (max(x) - min(x)) or 1.0 if len(x) > 1 else 1.0
    x = [a + dodge * span / 100 for a in x]
    pts = [(a, b, ci) for a, b, ci in zip(x, y, intervals) if b is not None]
    if not pts:
        return
    if not any(ci for _, _, ci in pts):
        _line(ax, x, y, **kw)
        return
    lows = [b - ci[0] if ci else 0.0 for _, b, ci in pts]
    highs = [ci[1] - b if ci else 0.0 for _, b, ci in pts]
    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[[max(v, 0.0) for v in lows],
                                                               [max(v, 0.0) for v in highs]],
                marker="o", capsize=3, **kw)


def _intervals(summaries, key):
    """Wilson intervals of ``key`` (accuracy / format_accuracy), None where a summary has none."""
    out = []
    for s in summaries:
        ci = (s.get("confidence_intervals") or {}).get(key)
        out.append(ci if isinstance(ci, list) and len(ci) == 2 else None)
    return out


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing drawn (no values yet): no empty legend box
        ax.legend(**kw)


def plot_accuracy(summaries, path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = _steps(summaries)
    _interval_line(ax, steps, _metric(summaries, "accuracy"), _intervals(summaries, "accuracy"), label="accuracy",
                   color=CATEGORY_COLORS["correct"])
    _interval_line(ax, steps, _metric(summaries, "format_accuracy"), _intervals(summaries, "format_accuracy"),
                   label="format accuracy", color="#1565c0", ls="--", dodge=1.0)
    sampled = [s.get("sampling_metrics") or {} for s in summaries]
    if any(m.get("pass_at_k") is not None for m in sampled):
        k = next(m["num_samples"] for m in sampled if m.get("num_samples"))
        _line(ax, steps, [m.get("pass_at_k") for m in sampled], label=f"pass@{k}", color="#00838f", ls=":")
        _line(ax, steps, [m.get("maj_at_k") for m in sampled], label=f"maj@{k}", color="#6d4c41", ls="-.")
    ax.set(xlabel="training step", ylabel="fraction of eval problems", ylim=(-0.02, 1.02),
           title="Accuracy and format accuracy (95% intervals)")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, Path(path))


def plot_categories(summaries, path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = _steps(summaries)
    series = [[_pct(s, "categorization", c) for s in summaries] for c in CATEGORY_COLORS]
    if len(steps) > 1:
        ax.stackplot(steps, *series, labels=list(CATEGORY_COLORS), colors=list(CATEGORY_COLORS.values()), alpha=0.85)
    else:  # one eval: a stacked bar says the same and an area would be invisible
        bottom = 0.0
        for (name, color), values in zip(CATEGORY_COLORS.items(), series):
            ax.bar(steps, values, bottom=bottom, color=color, label=name, width=1.0)
            bottom += values[0]
    ax.set(xlabel="training step", ylabel="% of eval problems", ylim=(0, 100), title="Outcome categories")
    _legend(ax, loc="upper left", fontsize="small")
    return _save(fig, Path(path))


def plot_length_entropy(summaries, path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    steps = _steps(summaries)
    _line(ax1, steps, _metric(summaries, "avg_response_length"), label="all", color="#9e9e9e", lw=5, alpha=0.6)
    _line(ax1, steps, _metric(summaries, "avg_response_length_correct"), label="correct",
          color=CATEGORY_COLORS["correct"])
    _line(ax1, steps, _metric(summaries, "avg_response_length_incorrect"), label="incorrect",
          color=CATEGORY_COLORS["format_failure"])
    ax1.set(xlabel="training step", ylabel="tokens", title="Response length")
    _legend(ax1, fontsize="small")
    entropy = _metric(summaries, "avg_token_entropy")
    _line(ax2, steps, entropy, color="#6a1b9a")
    if all(v is None for v in entropy):  # the vLLM backend measures no entropy: say so instead of an empty frame
        ax2.text(0.5, 0.5, "not measured by this eval backend\n(vLLM gives no full next-token distribution)",
                 ha="center", va="center", transform=ax2.transAxes, color="#616161")
    ax2.set(xlabel="training step", ylabel="nats", title="Mean token entropy of responses")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_failures(summaries, path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = _steps(summaries)
    kinds = sorted({k for s in summaries for k in s.get("format_failure_analysis", {})})
    for kind in kinds:
        _line(ax, steps, [_pct(s, "format_failure_analysis", kind) for s in summaries], label=kind)
    ax.set(xlabel="training step", ylabel="% of eval problems", ylim=(-2, 102), title="Format failures by type")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize="small")
    return _save(fig, Path(path))


def plot_training(history, path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    steps = [h["step"] for h in history]
    _line(ax1, steps, [h.get("loss") for h in history], label="loss (NLL / response token)", color="#424242",
          markersize=2)
    _line(ax1, steps, [h.get("entropy") for h in history], label="token entropy", color="#6a1b9a", markersize=2)
    ax1.set(xlabel="training step", title="Training loss and entropy")
    _legend(ax1, fontsize="small")
    _line(ax2, steps, [h.get("token_accuracy") for h in history], color="#2e7d32", markersize=2)
    ax2.set(xlabel="training step", ylabel="fraction", title="Token accuracy (teacher forcing)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_breakdown(summaries, field: str, path) -> Path:
    """Accuracy per subject (or level) over steps, with Wilson 95% error bars."""
    names = sorted({n for s in summaries for n in (s.get(f"by_{field}") or {})})
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    steps = _steps(summaries)
    for i, name in enumerate(names):
        groups = [(s.get(f"by_{field}") or {}).get(name) or {} for s in summaries]
        _interval_line(ax, steps, [g.get("accuracy") for g in groups], [g.get("accuracy_ci95") for g in groups],
                       dodge=i - (len(names) - 1) / 2, label=name, alpha=0.85)
    ax.set(xlabel="training step", ylabel="accuracy", ylim=(-0.02, 1.02), title=f"Accuracy by {field} (95% intervals)")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize="x-small", ncol=2)
    return _save(fig, Path(path))


RUN_PLOTS = {
    "accuracy.png": plot_accuracy,
    "categories.png": plot_categories,
    "format_failures.png": plot_failures,
    "length_entropy.png": plot_length_entropy,
}


def plot_run(run_dir, out_dir) -> list[Path]:
    """Every plot this run's files allow, written into out_dir; [] when nothing has been evaluated yet."""
    summaries = latest_summaries(run_dir)
    paths = [fn(summaries, Path(out_dir) / name) for name, fn in RUN_PLOTS.items()] if summaries else []
    for field in ("subject", "level"):
        if any(s.get(f"by_{field}") for s in summaries):
            paths.append(plot_breakdown(summaries, field, Path(out_dir) / f"by_{field}.png"))
    history = load_train_history(run_dir)
    if history:
        paths.append(plot_training(history, Path(out_dir) / "training.png"))
    return paths


# ---------------------------------------------------------------- several runs


def plot_accuracy_comparison(runs: list[tuple[str, list[dict]]], path) -> Path:
    """Validation accuracy of several runs (label, summaries) on one plot."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for i, (label, summaries) in enumerate(runs):
        _interval_line(ax, _steps(summaries), _metric(summaries, "accuracy"), _intervals(summaries, "accuracy"),
                       dodge=i - (len(runs) - 1) / 2, label=label)
    ax.set(xlabel="training step", ylabel="accuracy", ylim=(-0.02, 1.02), title="Validation accuracy by run")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize="small")
    return _save(fig, Path(path))


def plot_final_best(rows: list[dict], path) -> Path:
    """Bars of final and best accuracy per run (rows from ``comparison.comparison_rows``)."""
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["final_accuracy"] or 0 for r in rows], width=0.4, label="final")
    ax.bar([i + 0.2 for i in x], [r["best_accuracy"] or 0 for r in rows], width=0.4, label="best")
    ax.set_xticks(list(x), [r["run"] for r in rows], rotation=20)
    ax.set(ylabel="accuracy", ylim=(0, 1.05), title="Final and best validation accuracy")
    _legend(ax, fontsize="small")
    return _save(fig, Path(path))
