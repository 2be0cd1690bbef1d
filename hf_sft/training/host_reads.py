"""Count the device->host reads of a piece of training code, and say which line made each.

On CUDA a host read (``.item()``, ``.tolist()``, ``if tensor:``, a boolean-mask index, ``nonzero``)
waits until the GPU has finished everything queued before it; inside the forward and backward
that stalls the kernel queue once per call, so the CPU can no longer run ahead of the GPU.
The ops themselves are visible on any device: a ``TorchDispatchMode`` sees every aten call
(``aten._local_scalar_dense`` is what ``.item()``, ``int()``, ``bool()`` become; ``nonzero``,
``masked_select`` and boolean indexing size their output from the data), and ``Tensor.tolist`` /
``Tensor.numpy``, which bypass the dispatcher, are wrapped for the duration. So a CPU run counts
the calls that *would* sync on CUDA: the proxy that ``tests/training/test_packing.py`` and
``benchmarks/gpu_check.py`` use.
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# Ops whose result (or output size) depends on tensor data: the host must read the device.
_DATA_DEPENDENT = {_aten._local_scalar_dense.default, _aten.nonzero.default, _aten.masked_select.default,
                   _aten.equal.default, _aten.is_nonzero.default, _aten._unique2.default,
                   _aten.unique_consecutive.default, _aten.unique_dim.default, _aten.repeat_interleave.Tensor}
_INDEXING = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
             _aten._index_put_impl_.default}
# Frames that only forward a call; the owner of a read is the first frame outside them.
_PLUMBING = ("torch/utils/_python_dispatch.py", "torch/_tensor.py", "torch/overrides.py", "torch/_ops.py",
             "hf_sft/training/host_reads.py", "torch/utils/_contextlib.py", "torch/_dynamo/eval_frame.py",
             "torch/_compile.py")


def _owner(filename: str) -> str:
    parts = Path(filename).parts
    for name in ("hf_sft", "transformers", "accelerate", "torch", "benchmarks", "tests"):
        if name in parts:
            return name
    return "other"


@dataclass
class HostRead:
    op: str
    phase: str
    owner: str  # package of the innermost frame that asked for it: hf_sft, transformers, torch, ...
    where: str  # file:line of that frame (site-packages prefix dropped)


@dataclass
class HostReadCounter(TorchDispatchMode):
    """``with HostReadCounter() as reads:`` ... ``reads.events``; set ``reads.phase`` to label what runs."""

    phase: str = "all"
    events: list[HostRead] = field(default_factory=list)

    def __post_init__(self):
        super().__init__()
        self._saved = None

    def _record(self, op: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if not f.filename.endswith(_PLUMBING)]
        frame = frames[-1] if frames else None
        where = "?" if frame is None else f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        self.events.append(HostRead(op, self.phase, _owner(frame.filename) if frame else "other", where))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DATA_DEPENDENT and not (func is _aten.repeat_interleave.Tensor and kwargs.get("output_size")):
            self._record(str(func.overloadpacket.__name__))
        elif func in _INDEXING:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self._record(f"{func.overloadpacket.__name__}[bool mask]")
        elif func in (_aten._to_copy.default, _aten.copy_.default):
            src = args[1] if func is _aten.copy_.default else args[0]
            dst_cpu = (args[0].device.type == "cpu" if func is _aten.copy_.default
                       else str(kwargs.get("device", src.device)).startswith("cpu"))
            if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_cpu:
                self._record("copy to host")
        return func(*args, **kwargs)

    def __enter__(self):
        counter = self
        self._saved = (torch.Tensor.tolist, torch.Tensor.numpy)
        tolist, numpy = self._saved

        def counted_tolist(tensor, *a, **k):
            counter._record("tolist")
            return tolist(tensor, *a, **k)

        def counted_numpy(tensor, *a, **k):
            counter._record("numpy")
            return numpy(tensor, *a, **k)

        torch.Tensor.tolist, torch.Tensor.numpy = counted_tolist, counted_numpy
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist, torch.Tensor.numpy = self._saved
        return super().__exit__(*exc)

    def count(self, phase: str | None = None, owner: str | None = None) -> int:
        return sum(1 for e in self.events
                   if (phase is None or e.phase == phase) and (owner is None or e.owner == owner))

    def summary(self, phase: str | None = None) -> list[tuple[str, str, str, int]]:
        """(owner, op, where, how many) for each distinct reading line, most frequent first."""
        counts = Counter((e.owner, e.op, e.where) for e in self.events if phase is None or e.phase == phase)
        return [(*key, n) for key, n in counts.most_common()]
