"""Weight snapshots in shared memory: `SharedWeights` (one flat buffer, tied tensors once, cast to the engine's
dtype, readable across a spawn boundary), the `SnapshotPool` that reuses released buffers, and a /dev/shm too
small for a snapshot (64 MB in a default Docker container): a clear error at start, and a snapshot that does
not fit mid-run is a failed eval on disk, never a dead trainer.

Runs for real in a private mount namespace (``unshare -m``) whose /dev/shm is a 1 MB tmpfs, smaller than the
tiny model's 1.4 MB fp32 snapshot. Before the fix, torch's allocation error (ENOSPC) escaped the callback's
step-end hook and ended the run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from hf_sft.evaluation.snapshots import SharedWeights, SnapshotPool

from tests.helpers import REPO_ROOT

SCRIPT = r"""
import glob, json, os, sys, tempfile
sys.path.insert(0, os.getcwd())
from pathlib import Path
from hf_sft.evaluation.async_callback import AsyncEvalCallback
from hf_sft.evaluation.snapshots import SnapshotMemoryError
from hf_sft.evaluation.messages import WorkerSpec
from tests.helpers import make_demo_trainer

tmp = Path(tempfile.mkdtemp())
trainer, recipe = make_demo_trainer(tmp, "--max_steps", "2")
out = trainer.args.output_dir
callback = AsyncEvalCallback(trainer, WorkerSpec(model_dir="", device="cpu", problems=None, sampling=None,
                                                 output_dir=out), eval_steps=2)
try:
    callback.check_shared_memory()
    print("START-CHECK-PASSED")
except SnapshotMemoryError as err:
    print("START-ERROR:", err)
callback._schedule(2)  # as at an eval step mid-run
record = callback.records[2]
pattern = os.path.join(out, "results", "eval_logs", "failed_eval_step_2_*.json")
failed = [json.loads(open(p).read()) for p in glob.glob(pattern)]
print("RECORD:", record.status, "| FILES:", len(failed), "| WORKER:", callback.worker)
print("FILE-ERROR:", failed[0]["error"] if failed else None)
"""


def _can_mount_private_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_private_tmpfs(),
                    reason="needs unshare -m and tmpfs mounts (root or a user namespace)")
def test_small_dev_shm_is_a_clear_error_at_start_and_a_failed_eval_mid_run():
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
           f'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "{sys.executable}" -c "$0"', SCRIPT]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode} (-7 is SIGBUS)\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    assert "START-ERROR:" in out and "--shm-size" in out and "--ipc=host" in out, out
    assert "RECORD: failed | FILES: 1 | WORKER: None" in out, out
    assert "no snapshot taken: cannot allocate 1.4 MB of shared memory" in out, out


def test_fp32_master_weights_are_snapshotted_in_the_engine_dtype():
    """bf16 engine over fp32 master weights: the snapshot is half the size, bf16, and ints stay ints."""
    embed = torch.randn(64, 16)
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": embed, "norm.weight": torch.randn(16),
             "step": torch.tensor([3, 4])}
    full = SharedWeights.allocate(state)
    half = SharedWeights.allocate(state, torch.bfloat16)
    assert half.nbytes < 0.6 * full.nbytes
    assert half.matches(state) and not full.matches({k: v.to(torch.bfloat16) for k, v in state.items()})
    half.copy_from(state)
    got = dict(half.named_tensors())
    assert got["lm_head.weight"].dtype == torch.bfloat16
    assert torch.equal(got["lm_head.weight"], embed.to(torch.bfloat16))
    assert got["step"].dtype == torch.int64 and got["step"].tolist() == [3, 4]


def _read_shared(q_in, q_out):
    import io

    weights = q_in.get()
    buffer = io.BytesIO()  # plain bytes back: a tensor would need this process alive until it is received
    torch.save({name: t.clone() for name, t in weights.named_tensors()}, buffer)
    q_out.put(buffer.getvalue())


def test_shared_weights_cross_a_spawn_boundary_and_store_tied_tensors_once():
    import torch.multiprocessing as tmp

    embed = torch.randn(10, 4)
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": embed, "norm.weight": torch.ones(4),
             "bf": torch.randn(3, 5).to(torch.bfloat16), "step": torch.tensor(7)}
    slot = SharedWeights.allocate(state)
    assert slot.nbytes < 2 * 10 * 4 * 4 + 512  # the tied tensor is stored once
    assert slot.matches(state) and not slot.matches({**state, "extra": torch.ones(1)})
    slot.copy_from(state)
    ctx = tmp.get_context("spawn")
    q_in, q_out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_read_shared, args=(q_in, q_out))
    proc.start()
    q_in.put(slot)
    import io

    got = torch.load(io.BytesIO(q_out.get(timeout=120)))
    proc.join(30)
    assert set(got) == set(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)


def test_the_pool_reuses_a_buffer_once_it_is_not_busy_and_counts_its_peak():
    state = {"w": torch.randn(8, 4), "b": torch.zeros(4)}
    pool = SnapshotPool(torch.bfloat16)
    first = pool.free_slot(state, busy=[])
    assert first.matches(state) and dict(first.named_tensors())["w"].dtype == torch.bfloat16
    second = pool.free_slot(state, busy=[first])  # the worker still reads the first: a new buffer
    assert second is not first and pool.peak == 2
    assert pool.free_slot(state, busy=[second]) is first  # released: reused, nothing allocated
    assert pool.free_slot({"w": torch.randn(2, 2)}, busy=[]) not in (first, second)  # another shape: a new one
    assert len(pool.slots) == pool.peak == 3
    pool.clear()
    assert not pool.slots and pool.peak == 3
