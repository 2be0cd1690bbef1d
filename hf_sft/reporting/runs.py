"""Which runs a comparison names: a run directory, or a recipe YAML that says where its run went.

A recipe also gives the run its label (the recipe's file name) and its training-set size
(``num_train_examples``, or the number of records of ``train_data``), which a run directory alone does
not record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunRef:
    label: str
    run_dir: Path
    size: int | None = None


def count_train_examples(recipe: dict) -> int | None:
    """``num_train_examples``, else the record count of a local (or builtin) ``train_data`` file."""
    if recipe.get("num_train_examples"):
        return int(recipe["num_train_examples"])
    source = recipe.get("train_data")
    if not source:
        return None
    from hf_sft.data import builtin

    try:
        path = Path(builtin.resolve(source))
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except (OSError, ValueError):
        return None


def is_base_recipe(path: str) -> bool:
    """``base.yaml`` / ``base_math.yaml`` hold shared settings, not experiments (a glob picks them up)."""
    p = Path(path)
    return p.suffix in (".yaml", ".yml") and p.name.startswith("base")


def run_ref(spec: str) -> RunRef:
    """A run directory, or a recipe YAML (label = its file name, size and output_dir read from it)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from hf_sft.recipe_files import load_recipe_file

        recipe = load_recipe_file(path)
        if not recipe.get("output_dir"):
            raise ValueError(f"{path}: the recipe sets no output_dir")
        return RunRef(path.stem, Path(recipe["output_dir"]), count_train_examples(recipe))
    return RunRef(path.name, path)
