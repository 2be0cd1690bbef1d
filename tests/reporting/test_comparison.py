"""Several runs compared, named by recipe (label, size, output_dir) or by run directory."""

from __future__ import annotations

from hf_sft.reporting.comparison import build_comparison
from hf_sft.reporting.runs import run_ref
from tests.helpers import make_run


def test_comparison_of_runs_from_recipes_and_directories(tmp_path, capsys):
    runs = {"n128": (0.1, 0.3, 0.2), "full": (0.0, 0.5, 0.5), "filtered": (0.0, 0.5, 0.75)}
    recipes = []
    for name, accs in runs.items():
        make_run(tmp_path / name, accs)
        recipe = tmp_path / f"{name}.yaml"
        size = "num_train_examples: 128\n" if name == "n128" else ""
        data = tmp_path / f"{name}.jsonl"
        data.write_text('{"prompt": "p", "response": "r"}\n' * (7 if name == "full" else 5))
        recipe.write_text(f"output_dir: {tmp_path / name}\ntrain_data: {data}\n{size}")
        recipes.append(str(recipe))
    md = build_comparison([run_ref(r) for r in recipes], tmp_path / "cmp")
    text = md.read_text()
    assert "| n128 | 128 | 20 | 0.000 | 0.250 | 10 | 0.250 |" in text  # 1 of 4 correct at step 10 only
    assert "| full | 7 | 20 | 0.500 | 0.500 | 10 | 0.750 |" in text  # a tie goes to the earlier step
    assert "| filtered | 5 | 20 | 0.750 | 0.750 | 20 | 1.000 |" in text
    assert "Final accuracy, filtered minus full: +0.250" in text
    assert "## Final accuracy by subject" in text and "| run | Algebra | Number Theory |" in text
    for name in ("accuracy_curves.png", "final_best.png", "comparison.json"):
        assert (tmp_path / "cmp" / name).exists()
    assert run_ref(str(tmp_path / "full")).label == "full" and run_ref(str(tmp_path / "full")).size is None
    capsys.readouterr()
