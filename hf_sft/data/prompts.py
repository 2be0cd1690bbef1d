"""Prompt templates live as plain files in prompts/; a template holds one `{question}` slot.

They are found through ``hf_sft/prompts``: in a checkout a symlink to the top-level prompts/, in an installed
wheel a directory of copies (see pyproject.toml), so a template loads the same way in both.
"""

from __future__ import annotations

from pathlib import Path

# resolved: in a checkout, paths in messages are the prompts/ ones that recipes and the README name
PROMPTS_DIR = (Path(__file__).resolve().parents[1] / "prompts").resolve()


def load_template(name_or_path: str) -> str:
    """A template by name (prompts/NAME.prompt) or by path to a .prompt file."""
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix == ".prompt" and candidate.is_file() else PROMPTS_DIR / f"{name_or_path}.prompt"
    if not path.is_file():
        available = sorted(p.stem for p in PROMPTS_DIR.glob("*.prompt"))
        raise FileNotFoundError(f"prompt template '{name_or_path}' not found (looked for {path}); available: {available}")
    text = path.read_text()
    if "{question}" not in text:
        raise ValueError(f"{path}: a prompt template must contain the slot {{question}}")
    return text


def format_prompt(template: str, question: str) -> str:
    """Fill the slot by replacement, not str.format: questions are full of LaTeX braces."""
    return template.replace("{question}", question)
