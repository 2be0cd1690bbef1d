"""The data pipeline: formats, checks that name file and line, subsets, over-long policy, cache reuse."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from hf_sft.data import loading as data_mod
from hf_sft.data.loading import DataFormatError, check_jsonl, load_eval_problems, prepare_train_dataset, to_prompt_response


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def data_args(path, **kw):
    base = dict(train_data=str(path), train_split="train", prompt_template="r1_zero", num_train_examples=None,
                shuffle_seed=42, max_length=512, overlong_policy="drop", append_eos=False,
                preprocessing_num_workers=None)
    base.update(kw)
    return SimpleNamespace(**base)


SFT = [{"prompt": f"User: What is {a} + 7?\nAssistant: <think>",
        "response": f" {a} + 7 = {a + 7}. </think> <answer> {a + 7} </answer>", "ground_truth": str(a + 7)}
       for a in range(20)]


def test_gsm8k_record_becomes_r1_zero_prompt_and_target():
    rec = {"question": "Tom has 2 apples and buys 1,000 more. How many?",
           "answer": "He has 2 + 1000 = <<2+1000=1002>>1002 apples.\n#### 1,002"}
    out = to_prompt_response(rec, "gsm8k", "PREFIX User: {question}\nAssistant: <think>")
    assert out["prompt"] == "PREFIX User: Tom has 2 apples and buys 1,000 more. How many?\nAssistant: <think>"
    assert out["response"] == " He has 2 + 1000 = 1002 apples. </think> <answer> 1002 </answer>"
    assert out["ground_truth"] == "1002"


def test_math_solution_takes_last_boxed_with_nested_braces():
    rec = {"problem": "Compute $x$.", "solution": "First \\boxed{1}, then $x = \\boxed{\\frac{1}{2}}$."}
    out = to_prompt_response(rec, "math_solution", "{question}")
    assert out["ground_truth"] == "\\frac{1}{2}"
    assert out["response"].endswith("</think> <answer> \\frac{1}{2} </answer>")
    assert out["prompt"] == "Compute $x$."  # braces in questions survive templating


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [SFT[0], SFT[1], '{"prompt": "x", "response": ', SFT[2]])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: not valid JSON"):
        check_jsonl(path)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p"}, r":2: record has fields \['prompt'\]"),
    ({"prompt": "p", "response": 7}, r":2: field 'response' must be a string, got int"),
    ({"prompt": "p", "response": "  "}, r":2: field 'response' is empty"),
    (["not", "an", "object"], r":2: expected a JSON object, got list"),
    ({"question": "q", "answer": "#### 1"}, r":2: record is in gsm8k format but earlier lines are sft"),
])
def test_record_errors_name_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "d.jsonl", [SFT[0], record])
    with pytest.raises(DataFormatError, match=message):
        check_jsonl(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataFormatError, match="data file not found"):
        prepare_train_dataset(data_args(tmp_path / "nope.jsonl"), None)


def test_prepared_columns_match_the_spec_function(tmp_path, bpe_tokenizer):
    from hf_sft.core import tokenize_prompt_and_output

    path = write_jsonl(tmp_path / "sft.jsonl", SFT)
    ds = prepare_train_dataset(data_args(path), bpe_tokenizer).train
    assert len(ds) == len(SFT)
    ref = tokenize_prompt_and_output([SFT[3]["prompt"]], [SFT[3]["response"]], bpe_tokenizer)
    row = ds[3]
    assert row["input_ids"] == ref["input_ids"][0].tolist()
    assert row["labels"] == ref["labels"][0].tolist()
    assert row["response_mask"] == ref["response_mask"][0].tolist()
    assert row["num_response_tokens"] == sum(row["response_mask"])


def test_subsets_are_deterministic_nested_and_checked(tmp_path, bpe_tokenizer):
    path = write_jsonl(tmp_path / "sft.jsonl", SFT)
    small = prepare_train_dataset(data_args(path, num_train_examples=5), bpe_tokenizer).train
    again = prepare_train_dataset(data_args(path, num_train_examples=5), bpe_tokenizer).train
    large = prepare_train_dataset(data_args(path, num_train_examples=10), bpe_tokenizer).train
    assert small["input_ids"] == again["input_ids"]
    assert large["input_ids"][:5] == small["input_ids"]
    with pytest.raises(DataFormatError, match="asked for 50 examples but the dataset has only 20"):
        prepare_train_dataset(data_args(path, num_train_examples=50), bpe_tokenizer)


def test_overlong_policy_is_counted_never_silent(tmp_path, bpe_tokenizer, caplog):
    long = {"prompt": "User: q\nAssistant: <think>", "response": " think" * 200 + " </think> <answer> 1 </answer>"}
    path = write_jsonl(tmp_path / "sft.jsonl", SFT[:4] + [long])
    dropped = prepare_train_dataset(data_args(path, max_length=64), bpe_tokenizer)
    assert (dropped.dropped_overlong, dropped.truncated, len(dropped.train)) == (1, 0, 4)
    assert "1 examples over max_length=64 were dropped" in caplog.text
    truncated = prepare_train_dataset(data_args(path, max_length=64, overlong_policy="truncate"), bpe_tokenizer)
    assert (truncated.dropped_overlong, truncated.truncated, len(truncated.train)) == (0, 1, 5)
    assert max(len(x) for x in truncated.train["input_ids"]) == 63


def test_second_identical_run_reuses_the_tokenized_cache(tmp_path, bpe_tokenizer, monkeypatch):
    calls = []
    real = data_mod.encode_prompt_and_output

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(data_mod, "encode_prompt_and_output", counting)
    path = write_jsonl(tmp_path / "sft.jsonl", SFT)
    first = prepare_train_dataset(data_args(path), bpe_tokenizer).train
    n_first = len(calls)
    second = prepare_train_dataset(data_args(path), bpe_tokenizer).train
    assert n_first > 0 and len(calls) == n_first, "the second run re-tokenised instead of loading the cache"
    assert first.cache_files and first.cache_files == second.cache_files
    # a different option is a different fingerprint: tokenised again
    prepare_train_dataset(data_args(path, max_length=100), bpe_tokenizer)
    assert len(calls) > n_first


def test_eval_problems_from_math_answers(tmp_path):
    path = write_jsonl(tmp_path / "val.jsonl", [{"problem": "What is $1+1$?", "answer": "2"},
                                                {"problem": "Half?", "answer": "\\frac{1}{2}"}])
    ds = load_eval_problems(str(path), "test", "r1_zero")
    assert ds["ground_truth"] == ["2", "\\frac{1}{2}"]
    assert ds["prompt"][0].endswith("User: What is $1+1$?\nAssistant: <think>")
    assert set(ds.column_names) == {"prompt", "problem", "ground_truth"}


def test_answer_only_data_cannot_be_trained_on(tmp_path, bpe_tokenizer):
    path = write_jsonl(tmp_path / "val.jsonl", [{"problem": "p", "answer": "2"}])
    with pytest.raises(DataFormatError, match="no solution or response to train on"):
        prepare_train_dataset(data_args(path), bpe_tokenizer)


def test_eval_problems_keep_math_subject_and_level(tmp_path):
    path = write_jsonl(tmp_path / "val.jsonl", [
        {"problem": "What is $1+1$?", "answer": "2", "subject": "Prealgebra", "level": "Level 1", "unique_id": "a"},
        {"problem": "Half?", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": "Level 3", "unique_id": "b"}])
    ds = load_eval_problems(str(path), "test", "r1_zero")
    assert ds["subject"] == ["Prealgebra", "Algebra"] and ds["level"] == ["Level 1", "Level 3"]
    assert "unique_id" not in ds.column_names
