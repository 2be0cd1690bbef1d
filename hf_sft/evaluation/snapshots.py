"""What the eval worker gets from the trainer: weight snapshots in shared memory, and a model directory.

A snapshot is the policy's full state dict copied into one flat /dev/shm buffer (`SharedWeights`), in the
engine's dtype; the callback draws its buffers from a `SnapshotPool` and reuses those the worker has
released. The engine starts from a directory holding only config, generation config and tokenizer
(`write_engine_model_dir`); the weights never go through disk. /dev/shm too small is a
`SnapshotMemoryError` (with `SHM_HINT`), raised before any page is touched, never a SIGBUS.
"""

from __future__ import annotations

import logging
import os
import tempfile

import torch

logger = logging.getLogger(__name__)

_ALIGN = 64


SHM_HINT = ("shared memory (/dev/shm) is too small for the eval snapshots: in Docker run with --shm-size=16g "
            "(or --ipc=host); elsewhere enlarge /dev/shm, or set eval_backend: hf")


class SnapshotMemoryError(MemoryError):
    """Not enough shared memory for a weight snapshot; raised before any page is touched."""


def shm_free_bytes(path: str = "/dev/shm") -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _shared_bytes(n: int) -> torch.Tensor:
    """n bytes allocated in shared memory directly; ``share_memory_()`` allocates, then copies (3x slower).

    torch reserves the pages of the /dev/shm file at allocation (an undersized tmpfs fails here with
    ENOSPC, not later with SIGBUS), so a snapshot that does not fit is a SnapshotMemoryError to handle.
    """
    try:
        buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n))
    except (AttributeError, TypeError):  # a torch without the private helper
        buffer = torch.empty(n, dtype=torch.uint8).share_memory_()
    except RuntimeError as err:
        raise SnapshotMemoryError(f"cannot allocate {n / 2**20:.1f} MB of shared memory: {err}. {SHM_HINT}") from err
    return buffer


class SharedWeights:
    """A full state dict in one flat shared-memory buffer, with a view per tensor.

    One buffer means one shared-storage handle per hand-over (not one per tensor), and a buffer is
    reused for later snapshots of the same model. Tensors that share storage (a tied ``lm_head``) are
    stored once and listed under both names.
    """

    def __init__(self, layout: list[tuple[str, torch.dtype, tuple, int, str | None]], buffer: torch.Tensor,
                 cast: torch.dtype | None = None):
        self.layout = layout  # (name, dtype, shape, byte offset, name it aliases or None)
        self.buffer = buffer
        self.cast = cast

    @staticmethod
    def stored_dtype(t: torch.Tensor, cast: torch.dtype | None) -> torch.dtype:
        return cast if cast is not None and t.is_floating_point() else t.dtype

    @classmethod
    def plan(cls, state: dict[str, torch.Tensor], cast: torch.dtype | None = None):
        """(layout, bytes) of a snapshot; ``cast`` stores floating tensors in that dtype (fp32 master -> bf16)."""
        layout, seen, offset = [], {}, 0
        for name, t in state.items():
            dtype = cls.stored_dtype(t, cast)
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride())
            if key in seen:
                layout.append((name, dtype, tuple(t.shape), seen[key][1], seen[key][0]))
                continue
            offset = -(-offset // _ALIGN) * _ALIGN
            seen[key] = (name, offset)
            layout.append((name, dtype, tuple(t.shape), offset, None))
            offset += t.numel() * dtype.itemsize
        return layout, max(offset, 1)

    @classmethod
    def allocate(cls, state: dict[str, torch.Tensor], cast: torch.dtype | None = None) -> "SharedWeights":
        """Raises SnapshotMemoryError, before touching a page, when /dev/shm cannot hold it."""
        layout, nbytes = cls.plan(state, cast)
        return cls(layout, _shared_bytes(nbytes), cast)

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    def matches(self, state: dict[str, torch.Tensor]) -> bool:
        return len(state) == len(self.layout) and all(
            name in state and self.stored_dtype(state[name], self.cast) == dtype and tuple(state[name].shape) == shape
            for name, dtype, shape, _, _ in self.layout)

    def view(self, dtype: torch.dtype, shape: tuple, offset: int) -> torch.Tensor:
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        return self.buffer[offset: offset + nbytes].view(dtype).view(shape)

    def copy_from(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, dtype, shape, offset, alias in self.layout:
                if alias is None:
                    self.view(dtype, shape, offset).copy_(state[name])

    def named_tensors(self):
        for name, dtype, shape, offset, _ in self.layout:
            yield name, self.view(dtype, shape, offset)


class SnapshotPool:
    """The shared-memory buffers the callback snapshots into: a free one that fits is reused, else one is added.

    The policy bounds how many are busy at once (the one the worker reads plus those waiting), so the
    pool never grows past that; ``peak`` is how many it held at most.
    """

    def __init__(self, dtype: torch.dtype | None):
        self.dtype = dtype  # floating tensors are stored in it (the engine's dtype); None keeps theirs
        self.slots: list[SharedWeights] = []
        self.peak = 0

    def free_slot(self, state: dict[str, torch.Tensor], busy: list[SharedWeights]) -> SharedWeights:
        """A buffer not in ``busy`` that fits ``state``; raises SnapshotMemoryError when a new one does not fit."""
        busy_ids = {id(slot) for slot in busy}
        for slot in self.slots:
            if id(slot) not in busy_ids and slot.matches(state):
                return slot
        slot = SharedWeights.allocate(state, self.dtype)
        self.slots.append(slot)
        self.peak = max(self.peak, len(self.slots))
        logger.info("allocated a %.1f MB shared-memory snapshot buffer (%d in all)", slot.nbytes / 2**20,
                    len(self.slots))
        return slot

    def clear(self) -> None:
        self.slots.clear()


def torch_dtype(name) -> torch.dtype | None:
    """An EngineOptions dtype name ("bfloat16") as a torch dtype; None for "auto" and unknown names."""
    value = getattr(torch, str(name), None)
    return value if isinstance(value, torch.dtype) else None


def snapshot_bytes(trainer, dtype: torch.dtype | None) -> int:
    """Bytes of one snapshot, from parameter counts (no gather: works on every rank of a sharded run).

    ZeRO-3 parameters are empty placeholders that carry ``ds_numel``; FSDP2 DTensors report the full
    ``numel``. Tied weights are counted once, as the snapshot stores them once.
    """
    total, seen = 0, set()
    for p in list(trainer.model.parameters()) + list(trainer.model.buffers()):
        if id(p) in seen:
            continue
        seen.add(id(p))
        numel = getattr(p, "ds_numel", None) or p.numel()
        total += numel * (dtype.itemsize if dtype is not None and p.is_floating_point() else p.element_size())
    return total


def check_shared_memory(nbytes: int, count: int, policy: str) -> None:
    """/dev/shm must hold one snapshot of ``nbytes`` (error) and should hold ``count`` of them (warning)."""
    free = shm_free_bytes()
    if free < nbytes:
        raise SnapshotMemoryError(f"a weight snapshot needs {nbytes / 2**20:.1f} MB but /dev/shm has "
                                  f"{free / 2**20:.1f} MB free: {SHM_HINT}")
    if free < nbytes * count:
        logger.warning("/dev/shm has %.1f MB free, %d snapshots of %.1f MB need %.1f MB (eval_policy %s): an eval "
                       "due while the worker still reads the previous one will fail (recorded as a failed "
                       "eval). %s", free / 2**20, count, nbytes / 2**20, nbytes * count / 2**20, policy, SHM_HINT)


def write_engine_model_dir(trainer) -> str:
    """A temp dir with config, generation config and tokenizer: what vLLM needs to build the model.

    The weights never go through disk: the engine starts with ``load_format="dummy"`` and gets the
    policy's tensors by push.
    """
    accelerator = getattr(trainer, "accelerator", None)
    model = accelerator.unwrap_model(trainer.model) if accelerator is not None else trainer.model
    model_dir = tempfile.mkdtemp(prefix="hf_sft_eval_engine_")
    model.config.save_pretrained(model_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(model_dir)
    trainer.processing_class.save_pretrained(model_dir)
    return model_dir
