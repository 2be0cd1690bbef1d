"""hf_sft.gsm8k_filter: verdicts per trace and the filtered file (the calculator is tests/grading/test_calculator)."""

from __future__ import annotations

import json

import pytest

from hf_sft.data.loading import DataFormatError
from hf_sft.gsm8k_filter import filter_gsm8k, main, trace_verdict


def test_verdicts_and_the_filtered_file(tmp_path):
    records = [
        {"question": "q1", "answer": "3*12 = <<3*12=36>>36 and 36-10 = <<36-10=26>>26\n#### 26"},  # ok
        {"question": "q2", "answer": "3*12 = <<3*12=35>>35\n#### 35"},                               # wrong step
        {"question": "q3", "answer": "so she has 4 left\n#### 4"},                                  # unchecked
        {"question": "q4", "answer": "<<2**3=8>>8 then <<8+1=9>>9\n#### 9"},                        # ok, 1 unverifiable
    ]
    assert [trace_verdict(r["answer"]) for r in records] == [("ok", 0), ("wrong_step", 0), ("unchecked_answer", 0),
                                                             ("ok", 1)]
    src, out = tmp_path / "train.jsonl", tmp_path / "kept.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    stats = filter_gsm8k(src, out)
    assert [json.loads(line)["question"] for line in out.read_text().splitlines()] == ["q1", "q4"]
    assert (stats["filtered_size"], stats["dropped_wrong_step"], stats["dropped_unchecked_answer"],
            stats["unverifiable_annotations"]) == (2, 1, 1, 1)
    assert json.loads((tmp_path / "kept.stats.json").read_text()) == stats


def test_sft_traces_are_refused_with_the_right_command(tmp_path, capsys):
    src = tmp_path / "sft.jsonl"
    src.write_text(json.dumps({"prompt": "p", "response": "r", "ground_truth": "1"}) + "\n")
    with pytest.raises(DataFormatError, match="hf_sft.filter"):
        filter_gsm8k(src, tmp_path / "out.jsonl")
    assert main([str(src), str(tmp_path / "out.jsonl")]) == 2
    assert "error:" in capsys.readouterr().err
