"""Filtering SFT traces by correctness (hf_sft.filter) and the demo's noisy traces (hf_sft.noisy_traces)."""

from __future__ import annotations

import json

import pytest

from hf_sft.filter import main as filter_main
from hf_sft.filter import read_traces, stats_path
from hf_sft.noisy_traces import make_noisy

PROMPT = "User: {q}\nAssistant: <think>"


def trace(q: str, response: str, truth: str) -> dict:
    return {"prompt": PROMPT.format(q=q), "response": response, "ground_truth": truth}


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_filter_keeps_exactly_the_correct_traces_and_saves_statistics(tmp_path, capsys):
    # A noisy copy of 40 correct traces (the demo's recipe for wrong data), plus hand-written cases.
    clean = [trace(f"What is {a} + 7?", f" {a} + 7 = {a + 7}. </think> <answer> {a + 7} </answer>", str(a + 7))
             for a in range(10, 50)]
    write_jsonl(tmp_path / "clean.jsonl", clean)
    noisy = tmp_path / "noisy.jsonl"
    made = make_noisy(str(tmp_path / "clean.jsonl"), noisy, wrong=0.25, format_fail=0.15, seed=3)
    assert (made["unchanged"], made["wrong"], made["format"]) == (24, 10, 6)
    extra = [
        trace("Half?", " one over two </think> <answer> \\frac{1}{2} </answer>", "0.5"),  # equivalent: correct
        trace("Root?", " so </think> <answer> \\sqrt{8} </answer>", "2\\sqrt{2}"),  # equivalent: correct
        trace("Angle?", " so </think> <answer> 72 </answer>", "54^\\circ"),  # wrong answer
        trace("Tags?", " no think close <answer> 3 </answer>", "3"),  # format failure: no </think>
    ]
    with open(noisy, "a") as f:
        f.write("\n")  # a blank line is skipped, not an error
        f.writelines(json.dumps(r) + "\n" for r in extra)
    out = tmp_path / "kept.jsonl"

    assert filter_main([str(noisy), str(out), "--timeout", "20", "--num_workers", "1"]) == 0

    original = [line for line in noisy.read_text().splitlines() if line.strip()]
    kept = out.read_text().splitlines()
    expected = [json.dumps(r) for r in clean if json.dumps(r) in original] + [json.dumps(r) for r in extra[:2]]
    assert kept == expected  # verbatim lines, in input order
    stats = json.loads(stats_path(out).read_text())
    assert stats_path(out).name == "kept.stats.json"
    assert stats["original_size"] == 44 and stats["filtered_size"] == 26
    assert stats["retention_rate"] == round(26 / 44, 4)
    cats = {k: v["count"] for k, v in stats["categories"].items()}
    assert cats == {"correct": 26, "wrong_answer": 11, "format_failure": 7}
    assert stats["format_failure_types"]["missing_answer_close"]["count"] == 6
    assert stats["format_failure_types"]["missing_think_close"]["count"] == 1
    assert stats["timeouts"] == 0 and stats["grading_errors"] == 0
    printed = capsys.readouterr().out
    assert "retention rate  59.09%" in printed and "kept.stats.json" in printed


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "response": "r", "ground_truth": "1"', "not valid JSON"),
    ('{"prompt": "p", "response": "r"}', "field 'ground_truth' is missing or empty"),
    ('{"prompt": "p", "response": 3, "ground_truth": "1"}', "field 'response' must be a string"),
])
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path, capsys, line, message):
    good = json.dumps(trace("q", " a </think> <answer> 1 </answer>", "1"))
    src = tmp_path / "traces.jsonl"
    src.write_text(good + "\n" + line + "\n")
    assert filter_main([str(src), str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{src}:2" in err and message in err
    assert not (tmp_path / "out.jsonl").exists()


def test_problem_only_data_cannot_be_filtered(tmp_path):
    src = tmp_path / "problems.jsonl"
    write_jsonl(src, [{"problem": "What is 1 + 1?", "answer": "2"}])
    with pytest.raises(ValueError, match="filtering needs SFT traces"):
        read_traces(src)


def test_filter_refuses_to_overwrite_its_input(tmp_path, capsys):
    src = tmp_path / "traces.jsonl"
    write_jsonl(src, [trace("q", " a </think> <answer> 1 </answer>", "1")])
    assert filter_main([str(src), str(src)]) == 2
    assert "must not overwrite the input" in capsys.readouterr().err


def test_noisy_traces_are_seeded_and_corrupt_only_the_answer(tmp_path):
    src = tmp_path / "clean.jsonl"
    write_jsonl(src, [trace(f"{a}?", f" think {a} </think> <answer> {a} </answer>", str(a)) for a in range(100)])
    make_noisy(str(src), tmp_path / "a.jsonl", wrong=0.3, format_fail=0.1, seed=7)
    make_noisy(str(src), tmp_path / "b.jsonl", wrong=0.3, format_fail=0.1, seed=7)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    closed = [r for r in rows if r["response"].endswith("</answer>")]
    wrong = [r for r in closed if f"<answer> {r['ground_truth']} <" not in r["response"]]
    unclosed = [r for r in rows if not r["response"].endswith("</answer>")]
    assert len(wrong) == 30 and len(unclosed) == 10
    assert all(r["prompt"].startswith(f"User: {r['ground_truth']}?") for r in rows)
    with pytest.raises(ValueError):
        make_noisy(str(src), tmp_path / "c.jsonl", wrong=0.8, format_fail=0.3)


def test_filter_default_follows_the_evaluation_format_and_lenient_keeps_more(tmp_path, capsys):
    """r1_zero (the default) drops a correct answer written after "</think>\\n<answer>", as the evaluation
    would count it; r1_zero_lenient keeps it."""
    traces = [trace("a?", " 3 + 4 = 7. </think> <answer> 7 </answer>", "7"),
              trace("b?", " 3 + 4 = 7.\n</think>\n<answer>7</answer>", "7")]
    write_jsonl(tmp_path / "in.jsonl", traces)
    assert filter_main([str(tmp_path / "in.jsonl"), str(tmp_path / "strict.jsonl"), "--num_workers", "1"]) == 0
    assert filter_main([str(tmp_path / "in.jsonl"), str(tmp_path / "lenient.jsonl"), "--num_workers", "1",
                        "--reward_fn", "r1_zero_lenient"]) == 0
    assert len((tmp_path / "strict.jsonl").read_text().splitlines()) == 1
    assert len((tmp_path / "lenient.jsonl").read_text().splitlines()) == 2
    stats = json.loads(stats_path(tmp_path / "strict.jsonl").read_text())
    assert stats["format_failure_types"]["think_answer_separator"]["count"] == 1
    capsys.readouterr()
