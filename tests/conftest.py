"""Shared fixtures: tiny models and tokenizers built in the test session, never downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one OpenMP thread each (and in the runs they start),
    # since two processes with two spinning OpenMP threads apiece slow each other down several times over.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from tests import suite_budget  # noqa: E402
from tests.expensive_runs import shared_by_workers  # noqa: E402
from tests.helpers import make_tiny_qwen2  # noqa: E402


def pytest_configure(config):
    suite_budget.register(config)  # machine in the header, per-test durations and CPU time to .test-durations.json


# The longest run, started before everything else (tests/test_layout.py checks that the file exists: a stale
# path here would silently start it last).
RUN_FIRST = "tests/e2e/test_demo.py"


def pytest_collection_modifyitems(config, items):
    """Slow tests first, the demo's end-to-end run at the very front: with two workers (`make test`), the
    longest runs start at once and the quick tests fill the gaps, instead of one long run starting last.
    A stable sort, so the order within each kind stays the file order (xdist needs the same order on every
    worker, and gets it)."""
    def rank(item):
        if item.get_closest_marker("slow") is None:
            return 2
        return 0 if item.nodeid.startswith(RUN_FIRST) else 1
    items.sort(key=rank)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Builtin assets and datasets caches go to a per-session temp dir; vLLM's to one dir per pytest run.

    vLLM's cache is shared by both workers and every process they start: each engine start looks up its
    model class's description there (``modelinfos/``) and, on a miss, works it out in a subprocess that
    imports torch and vLLM (10-14 CPU-s). Shared, a miss happens once per architecture in a run (twice when
    both workers start the same one at the same moment), not per worker and again for the runs' own eval
    workers under ``~/.cache/vllm`` (vLLM writes the file atomically)."""
    root = tmp_path_factory.mktemp("cache")
    old = {k: os.environ.get(k) for k in ("HF_SFT_CACHE", "HF_DATASETS_CACHE", "VLLM_CACHE_ROOT")}
    os.environ["HF_SFT_CACHE"] = str(root / "hf_sft")
    os.environ["HF_DATASETS_CACHE"] = str(root / "datasets")
    os.environ["VLLM_CACHE_ROOT"] = str(shared_by_workers(tmp_path_factory, "vllm-cache"))
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory):
    """A byte-level BPE trained on the fly on a small math corpus (like Qwen's, much smaller)."""
    from hf_sft.data.builtin_tokenizer import build_bpe_tokenizer
    from transformers import AutoTokenizer

    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = []
    for a in range(30):
        lines.append(f"User: What is {a} + {a + 7}?\nAssistant: <think> ones and tens, so {a} + {a + 7} = {2 * a + 7}."
                     f" </think> <answer> {2 * a + 7} </answer>")
        lines.append(f"The answer is \\boxed{{\\frac{{{a}}}{{{a + 1}}}}} because thinking helps.")
    corpus.write_text("\n".join(lines))
    out = tmp_path_factory.mktemp("tokenizer")
    build_bpe_tokenizer(out, [corpus], vocab_size=400)
    return AutoTokenizer.from_pretrained(out)


@pytest.fixture
def tiny_model(bpe_tokenizer):
    return make_tiny_qwen2(len(bpe_tokenizer))
