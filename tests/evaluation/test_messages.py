"""Every message between trainer and worker is a module-level frozen dataclass that survives a pickle round
trip, plain and through torch.multiprocessing's pickler (the spawn queues' own, which shares tensors)."""

from __future__ import annotations

import dataclasses
import io
import pickle

import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers the reductions that share tensors)
from multiprocessing.reduction import ForkingPickler

from hf_sft.evaluation import messages
from hf_sft.evaluation.messages import (COMMANDS, REPLIES, Broken, Evaluate, Failed, Fatal, Init, Progress, Ready, Released,
                                        Result, Stop, WorkerLog, WorkerSpec)
from hf_sft.evaluation.runner import EvalProblems
from hf_sft.evaluation.snapshots import SharedWeights
from hf_sft.generation.base import SamplingSettings

SPEC = WorkerSpec(model_dir="/tmp/model", device="cpu", problems=EvalProblems(["1+1="], ["1+1"], ["2"], "inline"),
                  sampling=SamplingSettings(temperature=0.0, max_new_tokens=8), output_dir="/tmp/run")
PLAIN = [Init(SPEC), Stop(), Ready(1.5), Released(4, 0.25), Progress(4, "generated", 40, 100), Failed(4, "Traceback ...\nMemoryError"),
         Result(4, {"eval_step": 4, "metrics": {"accuracy": 0.5}}, push_s=0.25, eval_s=3.0),
         Broken("Traceback ...\nOSError"), Fatal("Traceback ...\nRuntimeError: no CUDA"),
         WorkerLog(40, "vllm.engine", "engine core died")]


def test_every_message_class_is_a_frozen_module_level_dataclass_and_is_listed():
    classes = {obj for obj in vars(messages).values() if isinstance(obj, type) and dataclasses.is_dataclass(obj)
               and obj.__module__ == messages.__name__} - {WorkerSpec}  # Init's payload: settings, not a message
    assert classes == set(COMMANDS) | set(REPLIES)
    for cls in classes:
        assert cls.__dataclass_params__.frozen and cls.__qualname__ == cls.__name__, cls
    assert {type(m) for m in PLAIN} | {Evaluate} == classes  # each one is round-tripped below


@pytest.mark.parametrize("message", PLAIN, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("dumps", [pickle.dumps, lambda m: bytes(ForkingPickler.dumps(m))], ids=["pickle", "torch"])
def test_messages_round_trip_a_pickle(message, dumps):
    assert pickle.loads(dumps(message)) == message


def test_an_evaluate_command_carries_its_shared_weights():
    state = {"w": torch.randn(3, 2), "tied": None}
    state["tied"] = state["w"]
    slot = SharedWeights.allocate(state)
    slot.copy_from(state)
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(Evaluate(6, slot))
    got = pickle.loads(buffer.getvalue())
    assert type(got) is Evaluate and got.step == 6
    tensors = dict(got.weights.named_tensors())
    assert set(tensors) == {"w", "tied"} and torch.equal(tensors["tied"], state["w"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.step = 7
