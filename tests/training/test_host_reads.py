"""HostReadCounter sees the calls that make the host wait for a CUDA device, and only those."""

from __future__ import annotations

import torch

from hf_sft.training.host_reads import HostReadCounter


def test_the_counter_sees_the_reads_that_sync_on_cuda():
    x = torch.arange(6.0)
    with HostReadCounter() as reads:
        x.tolist()
        x.sum().item()
        x[x > 2]
        bool(x.any())
        torch.nonzero(x)
        x.index_select(0, torch.tensor([1, 2]))  # an index tensor: no read
        x.split([2, 4])  # sizes given as ints: no read
    assert [e.op for e in reads.events] == ["tolist", "_local_scalar_dense", "index[bool mask]",
                                            "_local_scalar_dense", "nonzero"]
    assert {e.owner for e in reads.events} == {"tests"}
    assert torch.Tensor.tolist(torch.zeros(1)) == [0.0]  # restored
