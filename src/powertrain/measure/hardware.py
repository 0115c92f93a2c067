"""The device a run trains on, the precision it can afford there, and its CPU threads."""
from __future__ import annotations

import os
import platform
import warnings
from functools import lru_cache

import torch

from ..errors import RecipeError
from ..settings import VERSION, chosen_threads, choose_threads


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu. An unavailable device is an error, not a fallback."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RecipeError(f"train.device: '{name}' is not a device; expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"train.device: '{name}' requested but no CUDA GPU is visible; use train.device=cpu or auto")
    if dev.type == "cuda" and dev.index is None:  # 'cuda' is this process's GPU (its LOCAL_RANK's under torchrun)
        return torch.device("cuda", torch.cuda.current_device())
    return dev


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX; elsewhere bf16 is emulated, ~150x slower than fp32 matmul."""
    if platform.machine() in ("arm64", "aarch64"):
        return "bf16" in cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def use_tf32(device: torch.device, precision: str) -> bool:
    """TF32 tensor-core matmuls for fp32 on GPUs that have them (Ampere and newer: ~8x fp32's rate, a
    10-bit mantissa). Returns whether they are on; the bill says so and measures MFU against TF32's peak."""
    if device.type != "cuda" or precision != "fp32" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPUs that support it, fp16 (with a GradScaler) on older GPUs, fp32 on CPU
    for now: a new CPU run with 'auto' is decided at the start of its fit by a measured probe, bf16
    only where it is faster for the model (train/precision.py). Asking for a half type that this CPU
    only emulates (~150x slower than fp32) runs, with a warning.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if device.type == "cpu" and (precision == "fp16" or (precision == "bf16" and not cpu_has_native_bf16())):
        warnings.warn(f"train.precision={precision}: this CPU emulates {precision} (much slower than fp32); "
                      f"use train.precision=fp32 unless you are testing numerics", stacklevel=2)
    return precision


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        from .peak import cpu_model_name

        return cpu_model_name()
    return device.type


def use_threads(requested: int | str = "auto", keep: int | None = None) -> dict:
    """Apply this process's CPU thread choice to torch and return what env.json and the bill record.

    The choice is made once per process (the command makes it before torch loads, so OpenMP's wait policy
    applies too; else the first Trainer does); an explicit count, or a resumed run's own count (`keep`),
    that differs from it is applied instead. 'auto' only ever lowers torch's count (a caller's own
    torch.set_num_threads stands otherwise). Same thread count, same bits: the count is part of a CPU run's
    reproducibility."""
    choice = chosen_threads()
    now = lambda c: c.threads or torch.get_num_threads()  # noqa: E731  (None: torch's count as it is)
    if choice is None or (requested != "auto" and now(choice) != requested) or (keep and now(choice) != keep):
        choice = choose_threads(requested, keep=keep)
    exact = requested != "auto" or keep is not None
    if choice.threads is not None and (choice.threads < torch.get_num_threads() or exact):
        torch.set_num_threads(choice.threads)
    policy = os.environ.get("OMP_WAIT_POLICY")
    record = {"threads": torch.get_num_threads(), "wait_policy": policy or "OpenMP's default", "reason": choice.reason}
    if choice.wait_policy and policy != choice.wait_policy:
        record["note"] = (f"OMP_WAIT_POLICY={choice.wait_policy} would suit this machine, but torch loaded before it "
                          f"could be set (the powertrain command sets it first; or export it before starting Python)")
    return record


def environment(device: torch.device, threads: dict | None = None) -> dict:
    """What env.json records: versions, device and threads (`use_threads`'s record)."""
    return {
        "powertrain": VERSION,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **({"threads": threads} if threads else {}),
        "cuda": torch.version.cuda,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
