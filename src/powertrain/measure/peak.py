"""Peak FLOP/s per device and dtype, and MFU against it.

Two sources, and every `Peak` names which:
  - a datasheet table of *dense* figures for GPUs (NVIDIA's tables print tensor-core figures
    "with sparsity"; the dense figure is half of those, and that half is what is listed here);
  - a measured large matmul on this machine's CPU, cached per machine in a JSON file.

dtype names: "fp64", "fp32" (CUDA cores / plain fp32), "tf32" (fp32 matmuls on tensor cores,
used when torch.backends.cuda.matmul.allow_tf32 is on), "bf16", "fp16", "fp8".

>>> p = lookup_peak("NVIDIA H100 80GB HBM3", "bf16")
>>> p.device, p.flops_per_s, p.rated_power_w
('NVIDIA H100 SXM', 989400000000000.0, 700.0)
>>> mfu(4.947e14, p)
0.5
>>> mfu(1e12, None) is None
True
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import re
import socket
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..settings import cache_dir  # noqa: F401  (re-exported: measure.cache_dir)

__all__ = ["Peak", "GPU_PEAKS", "GpuSpec", "lookup_peak", "measure_cpu_peak", "cpu_peak", "peak_for", "mfu",
           "cache_dir", "cpu_model_name", "busy_reason", "cpu_sample", "CpuSample", "BUSY"]

T = 1e12


@dataclass(frozen=True)
class Peak:
    """A peak FLOP/s that MFU is measured against, and where it came from."""

    device: str
    dtype: str
    flops_per_s: float
    source: str
    rated_power_w: float | None = None  # board/chip power for the FLOP/J floor; None if unknown

    @property
    def flops_per_j(self) -> float | None:
        """Peak FLOP/s / rated W: the most FLOPs one joule can buy on this device (the floor)."""
        return self.flops_per_s / self.rated_power_w if self.rated_power_w else None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GpuSpec:
    device: str
    pattern: str                  # regex over the lower-cased device name torch/NVML reports
    dense_flops: dict[str, float]  # dtype -> dense FLOP/s
    rated_power_w: float
    source: str


_NV = "NVIDIA datasheet"
# Order matters: the first pattern that matches wins (PCIe before SXM, L40S before L4).
GPU_PEAKS: tuple[GpuSpec, ...] = (
    # H100 PCIe/SXM: NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100)
    GpuSpec("NVIDIA H100 PCIe", r"h100.*pcie",
            {"fp64": 26 * T, "fp32": 51 * T, "tf32": 378 * T, "bf16": 756 * T, "fp16": 756 * T, "fp8": 1513 * T},
            350.0, f"{_NV} H100 PCIe (tensor figures listed with sparsity; halved); max TDP 350 W"),
    GpuSpec("NVIDIA H100 SXM", r"h100(?!.*nvl)",
            {"fp64": 34 * T, "fp32": 67 * T, "tf32": 494.7 * T, "bf16": 989.4 * T, "fp16": 989.4 * T,
             "fp8": 1978.9 * T},
            700.0, f"{_NV} H100 SXM5 (tensor figures listed with sparsity; halved); max TDP 700 W"),
    # H200: NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200): FP64 34, FP32 67, TF32 989,
    # BF16/FP16 1,979, FP8 3,958 TFLOPS, the tensor figures with sparsity (halved here); up to 700 W.
    GpuSpec("NVIDIA H200 SXM", r"h200(?!.*nvl)",
            {"fp64": 34 * T, "fp32": 67 * T, "tf32": 494.7 * T, "bf16": 989.4 * T, "fp16": 989.4 * T,
             "fp8": 1978.9 * T},
            700.0, f"{_NV} H200 SXM (same compute as H100 SXM; sparse figures halved); max TDP 700 W"),
    # A100: NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): FP64 9.7,
    # FP32 19.5, TF32 156, BF16/FP16 312 TFLOPS dense; 250/300/400 W.
    GpuSpec("NVIDIA A100 PCIe 40GB", r"a100.*pcie.*40gb|a100.*40gb.*pcie",
            {"fp64": 9.7 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
            250.0, f"{_NV} A100 (dense tensor figures; sparse are 2x); A100 PCIe 40GB TDP 250 W"),
    GpuSpec("NVIDIA A100 PCIe 80GB", r"a100.*pcie",
            {"fp64": 9.7 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
            300.0, f"{_NV} A100 (dense tensor figures; sparse are 2x); A100 80GB PCIe TDP 300 W"),
    GpuSpec("NVIDIA A100 SXM", r"a100",
            {"fp64": 9.7 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
            400.0, f"{_NV} A100 (dense tensor figures; sparse are 2x); A100 SXM TDP 400 W"),
    GpuSpec("NVIDIA A10", r"\ba10\b",
            {"fp32": 31.2 * T, "tf32": 62.5 * T, "bf16": 125 * T, "fp16": 125 * T},
            150.0, f"{_NV} A10 (tensor figures listed with sparsity; halved); 150 W"),
    # L40S: NVIDIA L40S datasheet: FP32 91.6, TF32 183/366, BF16/FP16 362.05/733, FP8 733/1,466 TFLOPS (dense /
    # sparse); 350 W.
    GpuSpec("NVIDIA L40S", r"l40s",
            {"fp32": 91.6 * T, "tf32": 183 * T, "bf16": 362.05 * T, "fp16": 362.05 * T, "fp8": 733 * T},
            350.0, f"{_NV} L40S (tensor figures listed with sparsity; halved); max power 350 W"),
    # L4: NVIDIA L4 datasheet: FP32 30.3, TF32 120, BF16/FP16 242, FP8 485 TFLOPS with sparsity (halved); 72 W.
    GpuSpec("NVIDIA L4", r"\bl4\b",
            {"fp32": 30.3 * T, "tf32": 60 * T, "bf16": 121 * T, "fp16": 121 * T, "fp8": 242.5 * T},
            72.0, f"{_NV} L4 (tensor figures listed with sparsity; halved); max power 72 W"),
    GpuSpec("NVIDIA V100 PCIe", r"v100-pcie|v100 pcie",
            {"fp64": 7 * T, "fp32": 14 * T, "fp16": 112 * T},
            250.0, f"{_NV} V100 PCIe (fp16 = tensor-core mixed precision; no bf16); 250 W"),
    GpuSpec("NVIDIA V100 SXM2", r"v100(?!s)",
            {"fp64": 7.8 * T, "fp32": 15.7 * T, "fp16": 125 * T},
            300.0, f"{_NV} V100 SXM2 (fp16 = tensor-core mixed precision; no bf16); 300 W"),
    GpuSpec("NVIDIA T4", r"\bt4\b",
            {"fp32": 8.1 * T, "fp16": 65 * T},
            70.0, f"{_NV} T4 (fp16 = tensor-core mixed precision; no bf16); 70 W"),
    # RTX 5090: NVIDIA RTX Blackwell GPU architecture whitepaper (GB202): FP32 104.8 TFLOPS; tensor rates dense, with
    # FP32 accumulate (GeForce runs it at half the FP16-accumulate rate: FP16 419 dense, 838 sparse); 575 W TGP.
    GpuSpec("NVIDIA GeForce RTX 5090", r"rtx 5090",
            {"fp32": 104.8 * T, "tf32": 104.8 * T, "bf16": 209.5 * T, "fp16": 209.5 * T, "fp8": 419 * T},
            575.0, "NVIDIA RTX Blackwell architecture whitepaper, RTX 5090 (tensor figures with FP32 accumulate, "
                   "dense; GeForce halves FP32-accumulate rate); 575 W TGP"),
    # RTX 4090: NVIDIA Ada Lovelace GPU architecture whitepaper v2.1, appendix table (AD102): FP32 82.6, TF32 82.6,
    # BF16/FP16 with FP32 accumulate 165.2, FP8 with FP32 accumulate 330.3 TFLOPS dense; 450 W TGP.
    GpuSpec("NVIDIA GeForce RTX 4090", r"rtx 4090",
            {"fp32": 82.6 * T, "tf32": 82.6 * T, "bf16": 165.2 * T, "fp16": 165.2 * T, "fp8": 330.3 * T},
            450.0, "NVIDIA Ada Lovelace architecture whitepaper, RTX 4090 (tensor figures with FP32 "
                   "accumulate, dense; GeForce halves FP32-accumulate rate); 450 W TGP"),
    # MI300X: AMD Instinct MI300X data sheet (amd.com): FP64 vector 81.7, FP32 vector 163.4, TF32 653.7, FP16/BF16
    # 1,307.4, FP8 2,614.9 TFLOPS dense; 750 W.
    GpuSpec("AMD Instinct MI300X", r"mi300x",
            {"fp64": 81.7 * T, "fp32": 163.4 * T, "tf32": 653.7 * T, "bf16": 1307.4 * T, "fp16": 1307.4 * T,
             "fp8": 2614.9 * T},
            750.0, "AMD Instinct MI300X datasheet (dense; sparse figures are 2x); 750 W"),
)


def lookup_peak(device_name: str, dtype: str) -> Peak | None:
    """The datasheet peak for a GPU name as torch/NVML reports it, or None if not in the table."""
    name = device_name.lower()
    for spec in GPU_PEAKS:
        if re.search(spec.pattern, name):
            flops = spec.dense_flops.get(dtype)
            if flops is None:
                return None
            return Peak(spec.device, dtype, flops, spec.source, spec.rated_power_w)
    return None


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


_DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_cpu_peak(dtype: str = "fp32", target_s: float = 0.4, repeats: int = 5, max_n: int = 4096) -> Peak:
    """Time a square matmul on the CPU and return the best FLOP/s seen (2*n^3 per matmul).

    n is sized from a probe so that one matmul takes about `target_s` (small matmuls do not
    reach peak; emulated bf16/fp16, 40-150x slower, still finish in a few seconds). Uses torch's
    current thread count; the result depends on it and on other load on the machine.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"measure_cpu_peak: dtype '{dtype}' is not one of {sorted(_DTYPES)}")
    tdtype = _DTYPES[dtype]

    def rate(n: int) -> float:
        a, b = torch.randn(n, n).to(tdtype), torch.randn(n, n).to(tdtype)
        torch.mm(a, b)  # warm-up: thread pool, packing buffers
        best_s = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best_s = min(best_s, time.perf_counter() - t0)
        return 2 * n**3 / best_s

    probe_n, probe = 256, rate(256)
    if 2 * 256**3 / probe < 0.01:  # a fast dtype: probe nearer the large-matmul regime
        probe_n, probe = 1024, rate(1024)
    n = int((probe * target_s / 2) ** (1 / 3)) // 256 * 256
    n = min(max_n, max(probe_n, n))
    a, b = torch.randn(n, n).to(tdtype), torch.randn(n, n).to(tdtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    threads = torch.get_num_threads()
    today = _dt.date.today().isoformat()
    threads = f"{threads} thread{'s' if threads != 1 else ''}"
    return Peak(f"cpu: {cpu_model_name()} ({threads})", dtype, best,
                f"measured: {n}x{n} {dtype} matmul, best of {repeats}, {threads}, "
                f"torch {torch.__version__}, {today}")


def _machine_key(dtype: str) -> str:
    return f"{socket.gethostname()}|{cpu_model_name()}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads|" \
           f"torch {torch.__version__}|{dtype}"


BUSY = "measured while busy: not cached"  # in a Peak's source: this value served one run only


@dataclass(frozen=True)
class CpuSample:
    """A point in time for judging how busy the CPU was: wall clock, this process's CPU time (all
    threads) and all CPUs' busy time (/proc/stat: user, nice, system, irq, softirq, steal), seconds."""

    wall_s: float
    own_cpu_s: float
    all_busy_s: float | None  # None where /proc/stat is unreadable (not Linux)


def cpu_sample() -> CpuSample:
    own = time.process_time()
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        busy = (sum(fields[0:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = None
    return CpuSample(time.perf_counter(), own, busy)


def busy_reason(before: CpuSample, after: CpuSample, threads: int | None = None, cpus: int | None = None) -> str:
    """Why a peak measured between two samples is not to be trusted ('' when the CPU was free enough).

    Busy: other processes (and a hypervisor's steal) used more than a quarter of a CPU that the
    matmul's threads needed, i.e. more than (cpus - threads) + 0.25 CPUs on average over the window.
    Without /proc/stat, the 1-minute load average (which counts this process too) above half the CPUs.

    >>> busy_reason(CpuSample(0, 0, 0), CpuSample(2.0, 3.9, 4.0), threads=2, cpus=2)
    ''
    >>> busy_reason(CpuSample(0, 0, 0), CpuSample(2.0, 2.0, 3.6), threads=2, cpus=2)
    'other processes used 0.80 of 2 CPUs while 2 threads measured'
    """
    threads, cpus = threads or torch.get_num_threads(), cpus or os.cpu_count() or 1
    wall = after.wall_s - before.wall_s
    if before.all_busy_s is None or after.all_busy_s is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return f"1-min load average {load:.1f} on {cpus} CPUs" if load > 0.5 * cpus else ""
    if wall < 0.2:  # shorter than ~20 scheduler ticks: no evidence either way
        return ""
    other = ((after.all_busy_s - before.all_busy_s) - (after.own_cpu_s - before.own_cpu_s)) / wall
    if other > max(0, cpus - threads) + 0.25:
        return f"other processes used {other:.2f} of {cpus} CPUs while {threads} threads measured"
    return ""


class CacheNote(UserWarning):
    """A note about the peak cache (it is rebuilt): shown as one line, `powertrain: note: ...`."""


_format = warnings.formatwarning


def _formatwarning(message, category, filename, lineno, line=None):
    if isinstance(category, type) and issubclass(category, CacheNote):
        return f"powertrain: note: {message}\n"
    return _format(message, category, filename, lineno, line)


warnings.formatwarning = _formatwarning  # only CacheNote changes: every other warning keeps Python's two lines


def _read_cache(path: Path) -> dict:
    """The cache's valid entries; a damaged file or entry is ignored (and rebuilt) with a note."""
    try:
        entries = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as e:
        warnings.warn(f"peak cache '{path}' cannot be read ({e.strerror or e}); the peak is measured again",
                      CacheNote, stacklevel=3)
        return {}
    except ValueError as e:  # not JSON, not UTF-8 text
        entries, reason = {}, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
    else:
        reason = "" if isinstance(entries, dict) else f"a JSON {type(entries).__name__}, not an object"
        entries = entries if isinstance(entries, dict) else {}
    good = {k: e for k, e in entries.items() if _valid_entry(e)}
    if reason or len(good) < len(entries):
        reason = reason or f"{len(entries) - len(good)} malformed entries"
        warnings.warn(f"peak cache '{path}' is damaged ({reason}); ignored: the peak is measured again "
                      f"and the cache rewritten", CacheNote, stacklevel=3)
    return good


def _valid_entry(e) -> bool:
    try:
        return (isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("device", "dtype", "source"))
                and math.isfinite(float(e["flops_per_s"])) and float(e["flops_per_s"]) > 0)
    except (KeyError, TypeError, ValueError):
        return False


def _peak(e: dict) -> Peak:
    return Peak(e["device"], e["dtype"], float(e["flops_per_s"]), e["source"], e.get("rated_power_w"))


def _write_cache(path: Path, entries: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:  # a cache that cannot be written only costs a measurement next time
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warnings.warn(f"peak cache '{path}' not written ({e.strerror or e}); the peak is measured again next "
                      f"time (set POWERTRAIN_CACHE_DIR to a writable folder)", CacheNote, stacklevel=3)


def cpu_peak(dtype: str = "fp32", cache: Path | str | None = None, refresh: bool = False) -> Peak:
    """This CPU's measured peak, from the per-machine cache or measured once (a few seconds).

    The cache is `<cache_dir()>/peak.json`, keyed by host, CPU model, thread count, torch
    version and dtype. `refresh=True` measures again. A peak measured while other processes kept
    the CPU busy (`busy_reason`) serves this call only: its source says so, and it is not cached.
    """
    path = Path(cache) if cache is not None else cache_dir() / "peak.json"
    key = _machine_key(dtype)
    entries = _read_cache(path)
    if not refresh and key in entries:
        return _peak(entries[key])
    before = cpu_sample()
    peak = measure_cpu_peak(dtype)
    reason = busy_reason(before, cpu_sample())
    if reason:
        return replace(peak, source=f"{peak.source}; {BUSY} ({reason}; measure again when idle)")
    entries[key] = peak.to_dict()
    _write_cache(path, entries)
    return peak


def peak_for(device: torch.device | str, dtype: str, cache: Path | str | None = None,
             measure: bool = True) -> Peak | None:
    """The peak MFU should use on `device`: datasheet for GPUs, measured (cached) for the CPU.

    None when the GPU is not in the table or the dtype has no figure (MFU is then None, not
    made up). `measure=False` never runs the CPU matmul (returns the cached value or None).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return lookup_peak(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        if measure:
            return cpu_peak(dtype, cache)
        path = Path(cache) if cache is not None else cache_dir() / "peak.json"
        e = _read_cache(path).get(_machine_key(dtype))
        return _peak(e) if e else None
    return None


def mfu(achieved_flops_per_s: float | None, peak: Peak | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s / peak FLOP/s; None when either is unknown."""
    if achieved_flops_per_s is None or peak is None or not peak.flops_per_s > 0:
        return None
    return achieved_flops_per_s / peak.flops_per_s
