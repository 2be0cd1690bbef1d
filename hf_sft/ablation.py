"""Run several recipes one after another, then compare them: ``python -m hf_sft.ablation RECIPE...``.

    python -m hf_sft.ablation recipes/sft_128.yaml recipes/sft_256.yaml ... [--launcher CMD] [-- --key value]

Why a runner: an ablation is N ordinary training runs plus one comparison; a failed run (OOM, bad
data) must not cost the runs queued behind it. Each recipe runs in its own process (a crash cannot
leak into the next run), its output is shown and saved to ``<compare_dir>/logs/<recipe>.log``, each
finished run gets its report (``RUN_DIR/report/``), and at the end the cross-run plot and table are
built from whatever the runs wrote, failed ones included. Exit status 1 when any run failed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hf_sft.reporting.comparison import build_comparison
from hf_sft.reporting.run_report import build_run_report
from hf_sft.reporting.runs import RunRef, is_base_recipe, run_ref

# Runs start in the caller's directory, like a user's command: recipe paths are relative to it.
DEFAULT_LAUNCHER = shlex.join([sys.executable, str(Path(__file__).resolve().parent / "train.py")])


def default_compare_dir(refs: list[RunRef]) -> Path:
    """``<common parent of the runs' output dirs>/comparison``."""
    parents = {str(r.run_dir.resolve().parent) for r in refs}
    return Path(os.path.commonpath(sorted(parents))) / "comparison"


def run_one(recipe: str, launcher: list[str], extra: list[str], log_path: Path) -> int:
    """Run one training to completion, streaming its output to the terminal and to log_path."""
    cmd = [*launcher, recipe, *extra]
    print(f"\n=== {recipe}: {shlex.join(cmd)}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        return proc.wait()


def run_ablation(recipes: list[str], launcher: str = DEFAULT_LAUNCHER, extra: list[str] | None = None,
                 compare_dir=None) -> int:
    for skipped in [r for r in recipes if is_base_recipe(r)]:
        print(f"skipping {skipped}: a base recipe is shared settings, not an experiment")
    recipes = [r for r in recipes if not is_base_recipe(r)]
    if not recipes:
        raise ValueError("no recipe to run")
    refs = [run_ref(r) for r in recipes]  # every recipe is read before the first run starts
    compare_dir = Path(compare_dir) if compare_dir else default_compare_dir(refs)
    results = []
    start = time.perf_counter()
    for recipe, ref in zip(recipes, refs):
        t0 = time.perf_counter()
        code = run_one(recipe, shlex.split(launcher), extra or [], compare_dir / "logs" / f"{ref.label}.log")
        wall = time.perf_counter() - t0
        results.append((recipe, code, wall))
        if ref.run_dir.is_dir():
            try:
                build_run_report(ref.run_dir, quiet=True)
            except Exception as err:  # a report is a convenience; it must not stop the ablation
                print(f"warning: no report for {ref.run_dir}: {err}", file=sys.stderr)
    total = time.perf_counter() - start
    print("\n=== comparison")
    build_comparison(refs, compare_dir)
    print("\n=== runs")
    for recipe, code, wall in results:
        print(f"  {'ok    ' if code == 0 else f'FAILED (exit {code})'}  {wall:7.1f}s  {recipe}")
    print(f"  total wall time {total:.1f}s")
    failed = [recipe for recipe, code, _ in results if code != 0]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m hf_sft.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--launcher", default=os.environ.get("HF_SFT_LAUNCHER", DEFAULT_LAUNCHER),
                        help="command that runs one recipe (default: python hf_sft/train.py; on GPUs e.g. "
                             "'accelerate launch --config_file accelerate_config.yaml hf_sft/train.py')")
    parser.add_argument("--compare_dir", default=None, help="default: <runs' common parent>/comparison")
    args = parser.parse_args(argv)
    try:
        return run_ablation(args.recipes, args.launcher, extra, args.compare_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
