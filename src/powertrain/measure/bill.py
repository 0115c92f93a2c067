"""The bill: what a run cost, written to `bill.json` and printed as a table at the end of every run.

Everything comes from a Meter's totals (a Trainer's survive resume through the checkpoint) and a
plain `BillRecord` (parameters, FLOP counts, steps, device), so any loop that uses a Meter gets one. Energy keeps the method of each component; a figure that
is estimated says so, and a sum of measured and estimated parts is labelled 'mixed: ...'.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .carbon import CarbonModel, grid_intensity
from .energy import combine_methods, cpu_w_per_core
from .memory import peak_memory
from .meter import Meter
from .peak import mfu, peak_for
from ..recipe import RunConfig

PRECISION_DTYPE = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


def carbon_model(run: RunConfig) -> CarbonModel:
    region: str | float = run.region
    try:
        region = float(run.region)
    except ValueError:
        pass
    try:
        intensity = grid_intensity(region)
    except ValueError as e:
        from ..errors import RecipeError

        raise RecipeError(f"run.region: {e}") from None
    return CarbonModel(intensity=intensity, pue=run.pue, price_per_kwh=run.price_per_kwh)


@dataclass
class BillRecord:
    """What a bill needs besides the Meter's totals: plain figures that any training loop can give.

    `train_flops` is used where the Meter has no 'fit' window with FLOPs; `device` a torch.device or
    its name ("cpu", "cuda:0"); `job` {"world_size": N, ...} for a job of several processes."""

    params: int
    trainable_params: Optional[int] = None
    flops_per_sample_forward: Optional[int] = None
    flops_per_step_train: Optional[int] = None
    train_flops: Optional[int] = None
    steps: int = 0
    samples_trained: int = 0
    samples_evaluated: int = 0  # in the 'final_eval' window: J per inference sample
    device: Any = "cpu"
    precision: str = "fp32"
    tf32: bool = False  # fp32 matmuls on TF32 tensor cores (MFU against TF32's peak)
    phase_s: Optional[dict] = field(default_factory=dict)  # {"data": s, "forward_backward": s, "optimizer": s}; None: not timed
    job: dict = field(default_factory=lambda: {"world_size": 1})


def _floor(peak, device: torch.device) -> Optional[dict]:
    """The least energy the FLOPs could take: peak FLOP/s / rated power gives FLOP/J."""
    if peak is None:
        return None
    if peak.rated_power_w:
        return {"flops_per_j": peak.flops_per_j, "power_w": peak.rated_power_w, "source": peak.source}
    if device.type == "cpu":
        w, source = cpu_w_per_core()
        power = w * torch.get_num_threads()
        return {"flops_per_j": peak.flops_per_s / power, "power_w": power,
                "source": f"{torch.get_num_threads()} threads x {source}"}
    return None


def _components(*windows) -> tuple[dict, Optional[float], Optional[str]]:
    components: dict = {}
    for t in windows:
        for name, c in (t.energy.items() if t else ()):
            slot = components.setdefault(name, {"energy_j": 0.0, "method": c.method})
            slot["energy_j"] += c.energy_j
            if c.above_idle_j is not None:
                slot["above_idle_j"] = slot.get("above_idle_j", 0.0) + c.above_idle_j
    if not components:
        return components, None, None
    return (components, sum(c["energy_j"] for c in components.values()),
            combine_methods(c["method"] for c in components.values()))


def make_bill(meter: Meter | dict, record: BillRecord, described: Optional[Meter] = None) -> dict:
    """The bill, as a JSON-able dict, from a Meter (or its `totals()`) and a `BillRecord`. Windows it
    reads: 'fit' (training, incl. in-fit 'eval', 'checkpoint', 'compile' and 'precision_probe'), 'final_eval'
    (J per inference sample).

    >>> from powertrain.measure import Meter
    >>> m = Meter()
    >>> with m.window("fit"):
    ...     m.add_flops(10**9)
    >>> make_bill(m, BillRecord(params=100, steps=1, samples_trained=32))["flops"]["train_total"]
    1000000000
    """
    totals = meter.totals() if isinstance(meter, Meter) else dict(meter)
    described = described if described is not None else (meter if isinstance(meter, Meter) else None)
    device = record.device if isinstance(record.device, torch.device) else torch.device(record.device)
    fit, ev, fin, ck, comp, probe = (totals.get(k) for k in ("fit", "eval", "final_eval", "checkpoint", "compile",
                                                              "precision_probe"))
    carbon = described.carbon if described is not None else CarbonModel()
    samples = record.samples_trained
    train_flops = fit.flops if fit and fit.flops is not None else record.train_flops
    fit_s = fit.time_s if fit else None
    eval_s = (ev.time_s if ev else 0.0) + (fin.time_s if fin else 0.0)
    ckpt_s = ck.time_s if ck else 0.0
    compile_s = comp.time_s if comp else None  # the first step under torch.compile, compilation included
    probe_s = probe.time_s if probe else None  # precision: auto's CPU probe (train/precision.py)
    compute_s = fit_s - (ev.time_s if ev else 0.0) - ckpt_s - (compile_s or 0.0) - (probe_s or 0.0) if fit_s else None
    peak = peak_for(device, "tf32" if record.tf32 else PRECISION_DTYPE[record.precision])
    n_devices = record.job.get("world_size", 1)  # one device per rank (a GPU; on CPU, the threads of each rank)
    achieved = train_flops / compute_s if compute_s and train_flops else None
    components, energy_j, method = _components(fit, fin)
    floor = _floor(peak, device)
    fin_samples = record.samples_evaluated
    timed = record.phase_s is not None  # a loop powertrain does not run (integrations/) times fit, not its phases
    phases = {"data": 0.0, "forward_backward": 0.0, "optimizer": 0.0, **record.phase_s} if timed else \
        {"data": None, "forward_backward": None, "optimizer": None}
    return {
        "params": record.params,
        "trainable_params": record.trainable_params if record.trainable_params is not None else record.params,
        "flops": {"per_sample_forward": record.flops_per_sample_forward,
                  "per_step_train": record.flops_per_step_train,
                  "train_total": train_flops,
                  "counter": "torch.utils.flop_counter with powertrain's SDPA and RNN formulas; "
                             "forward + backward, optimizer update not counted"},
        "steps": record.steps, "samples_trained": samples,
        "time_s": {"total": (fit_s or 0.0) + (fin.time_s if fin else 0.0), "fit": fit_s,
                   **phases, "eval": eval_s, "checkpoint": ckpt_s, "compile": compile_s,
                   **({"precision_probe": probe_s} if probe_s is not None else {}),
                   "phases_note": ("not timed: the loop is not powertrain's (fit and eval are)" if not timed else
                                   "perf_counter around each phase" if device.type == "cpu" else
                                   "perf_counter around each phase; CUDA runs asynchronously, so phase times "
                                   "are launch times and only fit/eval/checkpoint (synchronised) are exact")},
        "throughput": {"samples_per_s": samples / compute_s if compute_s else None,
                       "model_flops_per_s": achieved},
        "mfu": {"value": mfu(achieved / n_devices, peak) if achieved else None,
                "peak": peak.to_dict() if peak else None, "devices": n_devices,
                "note": ("no peak known for this device and dtype: MFU not computed" if not peak else
                         "no training in this run: MFU not computed" if not achieved else
                         f"achieved FLOP/s / ({n_devices} x peak)" if n_devices > 1 else None)},
        "peak_memory": peak_memory(device).to_dict(),
        "energy": {"total_j": energy_j, "method": method, "components": components,
                   "windows": {k: v.to_dict() for k, v in totals.items()},
                   **(described.describe() if described is not None else {"notes": ["metering was off"]}),
                   "carbon": carbon.to_dict()},
        "j_per_train_sample": fit.energy_j / samples if fit and samples and fit.energy else None,
        "j_per_inference_sample": fin.energy_j / fin_samples if fin and fin_samples and fin.energy else None,
        "co2e_g": carbon.co2e_g(energy_j) if energy_j is not None else None,
        "cost": ({"amount": carbon.cost(energy_j), "currency": carbon.currency, "price_per_kwh": carbon.price_per_kwh}
                 if energy_j is not None and carbon.price_per_kwh is not None else None),
        "floor": ({**floor, "energy_j": train_flops / floor["flops_per_j"],
                   "efficiency": (train_flops / floor["flops_per_j"]) / fit.energy_j if fit and fit.energy_j else None}
                  if floor and train_flops else None),
        "device": {"type": device.type, "name": peak.device if peak else str(device),
                   "precision": record.precision, "tf32": record.tf32, **record.job},
    }


def recarbon(bill: dict, run: RunConfig) -> dict:
    """The same bill under another grid, PUE or price (energy unchanged)."""
    carbon = carbon_model(run)
    e = bill["energy"]["total_j"]
    bill = dict(bill)
    bill["energy"] = {**bill["energy"], "carbon": carbon.to_dict()}
    bill["co2e_g"] = carbon.co2e_g(e) if e is not None else None
    bill["cost"] = ({"amount": carbon.cost(e), "currency": carbon.currency, "price_per_kwh": carbon.price_per_kwh}
                    if e is not None and carbon.price_per_kwh is not None else None)
    return bill


def _si(x: Optional[float], unit: str = "") -> str:
    if x is None:
        return "-"
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


COUNTER_NAMES = {"nvml": "NVML", "nvml-power-sampled": "NVML power samples", "rapl": "RAPL"}
PART_NAMES = {"cpu": "CPU", "dram": "DRAM", "gpu": "GPU"}


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def energy_share(energy: dict) -> Optional[dict]:
    """What of a bill's energy was measured: {"total_j", "measured_j", "share" (measured_j / total_j, None
    without joules to divide), "counters" (e.g. ["NVML"]), "estimated" (e.g. ["CPU", "DRAM"])}, from each
    component's method ('measured:<counter>' or 'estimated:<model>'); None without energy. A bill without
    components (written by hand, or old) is read from its one method label.

    >>> s = energy_share({"total_j": 100.0, "components": {"gpu:0": {"energy_j": 99.0, "method": "measured:nvml"},
    ...     "cpu": {"energy_j": 0.6, "method": "estimated:cpu-tdp-per-core"},
    ...     "dram": {"energy_j": 0.4, "method": "estimated:dram-w-per-gb"}}})
    >>> s["share"], s["counters"], s["estimated"]
    (0.99, ['NVML'], ['CPU', 'DRAM'])
    """
    if not energy or energy.get("total_j") is None:
        return None
    comps = energy.get("components") or {}
    if not comps:  # one label for the whole: a share only where it is all one or the other
        parts = [m.strip() for m in str(energy.get("method") or "").removeprefix("mixed:").split("+") if m.strip()]
        measured = [m for m in parts if m.startswith("measured")]
        share = (1.0 if parts and len(measured) == len(parts) else 0.0 if not measured else None)
        counters = sorted({COUNTER_NAMES.get(m.partition(":")[2], m.partition(":")[2] or m) for m in measured})
        return {"total_j": energy["total_j"], "measured_j": None if share is None else share * energy["total_j"],
                "share": share, "counters": counters, "estimated": ["the rest"] if len(measured) < len(parts) else []}
    measured_j = total_j = 0.0
    counters, estimated = [], []
    for name, c in comps.items():
        j, method = float(c.get("energy_j") or 0.0), str(c.get("method") or "")
        total_j += j
        if method.startswith("measured"):
            measured_j += j
            counter = COUNTER_NAMES.get(method.partition(":")[2], method.partition(":")[2] or method)
            counters += [counter] if counter not in counters else []
        else:
            part = PART_NAMES.get(name.partition(":")[0], name)
            estimated += [part] if part not in estimated else []
    return {"total_j": total_j, "measured_j": measured_j, "share": measured_j / total_j if total_j > 0 else None,
            "counters": counters, "estimated": estimated}


def _percent(share: float) -> str:
    p = f"{100 * share:.0f}"
    return "<1%" if p == "0" and share > 0 else ">99%" if p == "100" and share < 1 else f"{p}%"


def energy_summary(energy: dict, short: bool = False) -> str:
    """How a bill's energy was obtained, in words: 'ESTIMATED: no counter readable here; see notes' (no
    measured part; `short`: 'ESTIMATED'), '99% measured (NVML); CPU and DRAM estimated' (the share of
    joules), 'measured (RAPL)'. The one wording of the CLI's bill, compare and the HTML report."""
    s = energy_share(energy)
    if s is None:
        return "not measured"
    if not s["counters"]:
        return "ESTIMATED" if short else "ESTIMATED: no counter readable here; see notes"
    counters = " + ".join(s["counters"])
    if not s["estimated"]:
        return f"measured ({counters})"
    share = _percent(s["share"]) + " measured" if s["share"] is not None else "partly measured"
    return f"{share} ({counters}); {_and(s['estimated'])} estimated"


def energy_headline(energy: dict) -> str:
    """The bill's first line after 'bill': 'energy 2.35 kJ, 99% measured (NVML); CPU and DRAM estimated'."""
    if not energy or energy.get("total_j") is None:
        return "energy not measured"
    return f"energy {_si(energy['total_j'], 'J')}, {energy_summary(energy)}"


def format_bill(bill: dict) -> str:
    """The bill as a plain-text table (also what `powertrain bill RUN` prints)."""
    t, e, m = bill["time_s"], bill["energy"], bill["mfu"]
    peak = m["peak"]
    rows = [
        ("parameters", f"{bill['params']:,}"),
        ("FLOPs / sample (forward)", _si(bill["flops"]["per_sample_forward"], "FLOP")),
        ("training FLOPs", f"{_si(bill['flops']['train_total'], 'FLOP')} over {bill['steps']:,} steps, "
                           f"{bill['samples_trained']:,} samples"),
        ("time", f"{t['total']:.2f} s (" + (f"data {t['data']:.2f}, fwd+bwd {t['forward_backward']:.2f}, "
                                             f"optimizer {t['optimizer']:.2f}, " if t.get("data") is not None else "")
                 + f"eval {t['eval']:.2f}, checkpoint {t['checkpoint']:.2f}"
                 + (f", first step with compilation {t['compile']:.2f}" if t.get("compile") else "")
                 + ("; phases not timed: not powertrain's loop" if t.get("data") is None else "") + ")"),
        ("throughput", f"{_si(bill['throughput']['samples_per_s'])} samples/s, "
                       f"{_si(bill['throughput']['model_flops_per_s'], 'FLOP/s')}"),
        ("MFU", (f"{m['value']:.2%} of {_si(peak['flops_per_s'], 'FLOP/s')} ({peak['device']}, {peak['dtype']}; "
                 f"{peak['source']})") if m["value"] is not None else m["note"]),
        ("peak memory", f"{_si(bill['peak_memory']['peak_bytes'], 'B')} ({bill['peak_memory']['method']})"),
    ]
    th = (bill.get("device") or {}).get("threads")
    if th and bill["device"].get("type") == "cpu":  # how many CPU threads, and why (measure/hardware.use_threads)
        rows.append(("CPU threads", f"{th['threads']}, wait policy {th['wait_policy']} ({th['reason']})"))
    rows += [
        ("energy", f"{_si(e['total_j'], 'J')}  [{e['method']}]" if e["total_j"] is not None else "not measured"),
    ]
    for name, c in e.get("components", {}).items():
        rows.append((f"  {name}", f"{_si(c['energy_j'], 'J')}  [{c['method']}]"))
    rows += [
        ("J / training sample", _si(bill["j_per_train_sample"], "J")),
        ("J / inference sample", _si(bill["j_per_inference_sample"], "J")),
        ("CO2e", f"{bill['co2e_g']:.3g} g ({e['carbon']['intensity']['region']}, "
                 f"{e['carbon']['intensity']['g_per_kwh']:g} g/kWh, PUE {e['carbon']['pue']:g}; "
                 f"{e['carbon']['intensity'].get('source') or 'source not recorded'})"
         if bill["co2e_g"] is not None else "-"),
    ]
    if bill.get("cost"):
        rows.append(("cost", f"{bill['cost']['amount']:.4g} {bill['cost']['currency']}"))
    if bill.get("floor"):
        f = bill["floor"]
        eff = f" (this run: {f['efficiency']:.2%} of that efficiency)" if f.get("efficiency") else ""
        rows.append(("physical floor", f"{_si(f['energy_j'], 'J')} at peak FLOP/J{eff}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"bill  ({energy_headline(e)})"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    for note in e.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
