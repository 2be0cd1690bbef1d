"""Recipe YAML files as plain dicts: ``base:`` composition and clear errors, without the dataclasses.

Apart from ``hf_sft.config`` (which builds ``TrainingArguments`` and so loads transformers and torch) because
the report reads recipes too, to label runs and count their training examples, and must stay torch-free.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class RecipeError(ValueError):
    """A recipe that cannot be run as written; the message names the file and key."""


def load_recipe_file(path: str | Path) -> dict:
    """Read a recipe YAML; ``base:`` (a path relative to the file) is merged underneath it."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        merged = load_recipe_file(path.parent / base)
        merged.update(data)
        data = merged
    return data
