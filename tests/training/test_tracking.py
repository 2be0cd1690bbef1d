"""Trackers: train/* on a train_step axis, eval/* on an eval_step axis (hf_sft.training.tracking).

The end-to-end test trains a tiny model for 4 steps with generation-based evaluation and
`report_to: [wandb, tensorboard]`, wandb offline (no API key, no network), then reads back what a later
`wandb sync` would upload (the run's .wandb file, with wandb's own protobuf schema) and the TensorBoard
event file.
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import pytest

from hf_sft.training.tracking import tracker_metrics
from tests.helpers import REPO_ROOT


def test_train_and_eval_logs_are_named_and_stepped_apart():
    axis, train = tracker_metrics({"loss": 2.5, "entropy": 1.0, "learning_rate": 1e-3, "epoch": 0.5}, 7)
    assert axis == "train_step"
    assert train == {"train/loss": 2.5, "train/entropy": 1.0, "train/learning_rate": 1e-3, "train/epoch": 0.5,
                     "train_step": 7}  # no GPU here, so no system/* keys
    axis, ev = tracker_metrics({"eval/accuracy": 0.25, "eval/failure/missing_think_close": 0.1, "eval_step": 50,
                                "epoch": 1.0}, 50)
    assert axis == "eval_step"
    assert ev == {"eval/accuracy": 0.25, "eval/failure/missing_think_close": 0.1, "eval/epoch": 1.0, "eval_step": 50}
    _, end = tracker_metrics({"train_runtime": 10.0, "train_loss": 1.0, "epoch": 1.0}, 9)
    assert end == {"train/epoch": 1.0, "train_step": 9}  # one-off figures go to the run summary instead


def wandb_records(path: Path):
    """Records of a .wandb file: a 7-byte header, then LevelDB-log framed protobuf ``Record`` messages.

    Read while wandb-core may still be writing: a record cut short at the end of the file is left for the next
    read (parsing it failed CI once with "Wire format was corrupt"; a protobuf cut at a field boundary would
    even parse, as a record with fields missing).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        if pos + 7 + length > len(data):  # wandb-core is still appending this record: stop before it
            return
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


@pytest.mark.slow
def test_offline_wandb_and_tensorboard_runs_have_both_axes(tmp_path, monkeypatch, capsys):
    import json

    wandb = pytest.importorskip("wandb", reason="needs the tracking extra: pip install -e '.[tracking]'")
    pytest.importorskip("tensorboard", reason="needs the tracking extra: pip install -e '.[tracking]'")
    from hf_sft.evaluation.callback import GenerationEvalCallback
    from hf_sft.config import parse_recipe
    from hf_sft.core import pad_token_id
    from hf_sft.data.loading import prepare_train_dataset
    from hf_sft.training.modeling import load_model, load_tokenizer
    from hf_sft.training.tracking import TensorBoardAxesCallback, WandbAxesCallback, use_project_trackers
    from hf_sft.evaluation.from_recipe import add_eval_callback
    from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer

    for key in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_RUN_ID", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "hf-sft-test")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base: {REPO_ROOT}/recipes/demo.yaml\nmodel_config: {REPO_ROOT}/recipes/models/tiny_qwen2.json\n"
                      "report_to: [wandb, tensorboard]\n")
    out = tmp_path / "run"
    model_args, data_args, eval_args, args = parse_recipe([
        str(recipe), "--output_dir", str(out), "--max_steps", "4", "--logging_steps", "1", "--eval_steps", "2",
        "--num_train_examples", "32", "--per_device_train_batch_size", "8", "--eval_num_examples", "4",
        "--eval_max_new_tokens", "8", "--eval_batch_size", "4"])
    tokenizer = load_tokenizer(model_args)
    trainer = SFTTrainer(model=load_model(model_args, args, tokenizer), args=args,
                         train_dataset=prepare_train_dataset(data_args, tokenizer).train,
                         data_collator=PadToLongestCollator(pad_token_id(tokenizer)), processing_class=tokenizer)
    to_close = add_eval_callback(trainer, model_args, data_args, eval_args, args, tokenizer)
    use_project_trackers(trainer)
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert WandbAxesCallback in kinds and TensorBoardAxesCallback in kinds
    # In the stock callbacks' places, before the eval callback: trackers start before the step-0 eval logs.
    eval_at = kinds.index(GenerationEvalCallback)
    assert kinds.index(WandbAxesCallback) < eval_at and kinds.index(TensorBoardAxesCallback) < eval_at
    try:
        trainer.train()
    finally:
        for resource in to_close:
            resource.close()
        wandb.finish()

    printed = capsys.readouterr().out
    assert re.search(r"wandb: offline run run-\d{8}-\d{6} in .*; upload it with: wandb sync ", printed), printed[-3000:]
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    for _ in range(60):  # wandb-core may still be writing the last records after finish() returns
        records = list(wandb_records(run_file))
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds:
            break
        time.sleep(0.5)
    # A read that races the writer sees the file cut anywhere: it gets a prefix of the records, never an error.
    data, cut = run_file.read_bytes(), tmp_path / "cut.wandb"
    for end in range(8, len(data), max(len(data) // 50, 1)):
        cut.write_bytes(data[:end])
        seen = list(wandb_records(cut))
        assert seen == records[:len(seen)], end
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert re.fullmatch(r"run-\d{8}-\d{6}", run.display_name)
    steps = {m.glob_name: m.step_metric for r in records if r.WhichOneof("record_type") == "metric"
             for m in [r.metric] if m.glob_name}
    assert steps == {"train/*": "train_step", "system/*": "train_step", "eval/*": "eval_step"}
    assert "exit" in kinds  # the run was closed: `wandb sync` uploads it as finished
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    eval_rows = [r for r in rows if "eval/accuracy" in r]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["eval_step"] for r in eval_rows] == [0, 2, 4]
    assert all("train_step" not in r and not any(k.startswith("train/") for k in r) for r in eval_rows)
    assert train_rows and all("eval_step" not in r for r in train_rows)
    assert [r["train_step"] for r in train_rows] == sorted(r["train_step"] for r in train_rows)
    assert not any(k.startswith("train/eval") or k == "eval/step" for r in rows for k in r)
    # The demo's eval problems carry subject / level: each eval logs them under eval/subject/<name>/...
    assert all(any(k.startswith("eval/subject/") and k.endswith("/accuracy") for k in r) for r in eval_rows)
    assert all("eval/accuracy_ci_high" in r and "eval/grader_disagreements" in r for r in eval_rows)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in (out / "runs").glob("*/events.out.tfevents.*")}
    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "eval/accuracy" in tags and "train/eval/accuracy" not in tags
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [0, 2, 4]
    assert any(t.startswith("eval/level/level_") for t in tags)
