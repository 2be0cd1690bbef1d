"""Reports of finished (or still running) runs, built only from what they wrote to disk.

    python -m hf_sft.report RUN_DIR [--out DIR]            # plots, summary table, report.html
    python -m hf_sft.report --compare RUN... [--out DIR]    # accuracy curves of all runs, comparison table

A run's report goes to ``RUN_DIR/report/`` (never under results/, which only the results writer
touches). In ``--compare`` a RUN is a run directory or a recipe YAML: a recipe also gives the run its
training-set size (``num_train_examples``, or the number of records of ``train_data``) and its label
(the recipe's file name), which a run directory alone does not record.
"""

from __future__ import annotations

import argparse
import sys

from hf_sft.reporting.comparison import build_comparison
from hf_sft.reporting.run_report import build_run_report
from hf_sft.reporting.runs import is_base_recipe, run_ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_sft.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="a run directory (or, with --compare, run directories / recipes)")
    parser.add_argument("--compare", action="store_true", help="compare several runs")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report, or ./comparison)")
    args = parser.parse_args(argv)
    try:
        if args.compare:
            build_comparison([run_ref(r) for r in args.runs if not is_base_recipe(r)], args.out or "comparison")
        else:
            if len(args.runs) != 1:
                parser.error("one RUN_DIR at a time (or --compare)")
            build_run_report(args.runs[0], args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
