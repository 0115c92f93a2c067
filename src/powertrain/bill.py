"""The bill: what a run cost, written to `bill.json` and printed as a table at the end of every run.

Everything comes from the trainer's Meter totals (which survive resume through the checkpoint),
its FLOP counts and the device's peak. Energy keeps the method of each component; a figure that
is estimated says so, and a sum of measured and estimated parts is labelled 'mixed: ...'.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .measure import CarbonModel, cpu_w_per_core, grid_intensity, mfu, peak_for, peak_memory
from .recipe import RunConfig

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
        from .errors import RecipeError

        raise RecipeError(f"run.region: {e}") from None
    return CarbonModel(intensity=intensity, pue=run.pue, price_per_kwh=run.price_per_kwh)


def _floor(peak, device: torch.device) -> Optional[dict]:
    """The least energy the FLOPs could take: peak FLOP/s ÷ rated power gives FLOP/J."""
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


def _job_totals(trainer) -> tuple[dict, Optional[int], dict]:
    """(meter totals, FLOPs of one full train step, device record) of the whole job.

    One process: its own. A job (a collective): time is rank 0's wall time; FLOPs are summed over the
    ranks, each of which counted its share of the batch; energy is summed over the ranks, where local
    rank 0 of each node alone read the node's counters (RAPL, NVML) and every rank its process estimate."""
    from .measure.meter import WindowTotals

    d = trainer.dist
    per_step = trainer._step_flops.get(trainer._local(trainer.batch_size_at(0)), 0)
    if not d.enabled:
        totals = trainer.meter.totals() if trainer.meter else {}
        return totals, per_step or None, {"world_size": 1}
    from . import distributed

    states = distributed.gather_objects(trainer.meter.state_dict() if trainer.meter else None)
    totals = {}
    if states[0] is not None:
        merged = distributed.merge_meter_states(states)
        totals = {k: WindowTotals.from_dict(v) for k, v in merged["totals"].items()}
    per_step = int(distributed.all_reduce_sum([per_step], trainer.device)[0])
    devices = distributed.describe_devices(trainer.device)
    nodes = len({(r["node"], r["node_rank"]) for r in devices})
    return totals, per_step or None, {"world_size": d.world_size, "strategy": d.strategy, "nodes": nodes,
                                      "devices": devices}


def make_bill(trainer, run: RunConfig) -> dict:
    """The bill of a trained (and finally evaluated) Trainer, as a JSON-able dict (one per job: in a
    distributed job every rank calls it, and all get the job's bill)."""
    from .models import count_params

    totals, per_step_flops, job = _job_totals(trainer)
    if not trainer.dist.is_main:
        return {"rank": trainer.dist.rank, "note": "the job's bill is rank 0's"}
    fit, ev, fin, ck = (totals.get(k) for k in ("fit", "eval", "final_eval", "checkpoint"))
    carbon = carbon_model(run)
    samples = trainer.samples_trained()
    train_flops = fit.flops if fit else trainer.train_flops(0, trainer.step)
    fit_s = fit.time_s if fit else None
    eval_s = (ev.time_s if ev else 0.0) + (fin.time_s if fin else 0.0)
    ckpt_s = ck.time_s if ck else 0.0
    compute_s = fit_s - (ev.time_s if ev else 0.0) - ckpt_s if fit_s else None
    peak = peak_for(trainer.device, PRECISION_DTYPE[trainer.precision])
    n_devices = job["world_size"]  # one device per rank (a GPU; on CPU, the threads of each rank)
    achieved = train_flops / compute_s if compute_s else None
    components, energy_j, method = {}, None, None
    for t in (fit, fin):
        for name, c in (t.energy.items() if t else ()):
            slot = components.setdefault(name, {"energy_j": 0.0, "method": c.method})
            slot["energy_j"] += c.energy_j
            if c.above_idle_j is not None:
                slot["above_idle_j"] = slot.get("above_idle_j", 0.0) + c.above_idle_j
    if components:
        from .measure import combine_methods

        energy_j = sum(c["energy_j"] for c in components.values())
        method = combine_methods(c["method"] for c in components.values())
    floor = _floor(peak, trainer.device)
    fin_samples = trainer.eval_samples["final_eval"]
    bill = {
        "params": count_params(trainer.model),
        "trainable_params": count_params(trainer.model, trainable_only=True),
        "flops": {"per_sample_forward": trainer.forward_flops_per_sample,
                  "per_step_train": per_step_flops,
                  "train_total": train_flops,
                  "counter": "torch.utils.flop_counter with powertrain's SDPA and RNN formulas; "
                             "forward + backward, optimizer update not counted"},
        "steps": trainer.step, "samples_trained": samples,
        "time_s": {"total": (fit_s or 0.0) + (fin.time_s if fin else 0.0), "fit": fit_s,
                   **{k: v for k, v in trainer.phase_s.items()}, "eval": eval_s, "checkpoint": ckpt_s,
                   "phases_note": ("perf_counter around each phase" if trainer.device.type == "cpu" else
                                   "perf_counter around each phase; CUDA runs asynchronously, so phase times "
                                   "are launch times and only fit/eval/checkpoint (synchronised) are exact")},
        "throughput": {"samples_per_s": samples / compute_s if compute_s else None,
                       "model_flops_per_s": achieved},
        "mfu": {"value": mfu(achieved / n_devices, peak) if achieved else None,
                "peak": peak.to_dict() if peak else None, "devices": n_devices,
                "note": ("no peak known for this device and dtype: MFU not computed" if not peak else
                         f"achieved FLOP/s / ({n_devices} x peak)" if n_devices > 1 else None)},
        "peak_memory": peak_memory(trainer.device).to_dict(),
        "energy": {"total_j": energy_j, "method": method, "components": components,
                   "windows": {k: v.to_dict() for k, v in totals.items()},
                   **(trainer.meter.describe() if trainer.meter else {"notes": ["metering was off"]}),
                   "carbon": carbon.to_dict()},
        "j_per_train_sample": fit.energy_j / samples if fit and samples and fit.energy else None,
        "j_per_inference_sample": fin.energy_j / fin_samples if fin and fin_samples and fin.energy else None,
        "co2e_g": carbon.co2e_g(energy_j) if energy_j is not None else None,
        "cost": ({"amount": carbon.cost(energy_j), "currency": carbon.currency, "price_per_kwh": carbon.price_per_kwh}
                 if energy_j is not None and carbon.price_per_kwh is not None else None),
        "floor": ({**floor, "energy_j": train_flops / floor["flops_per_j"],
                   "efficiency": (train_flops / floor["flops_per_j"]) / fit.energy_j if fit and fit.energy_j else None}
                  if floor and train_flops else None),
        "device": {"type": trainer.device.type, "name": peak.device if peak else str(trainer.device),
                   "precision": trainer.precision, **job},
    }
    return bill


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


def write_bill(bill: dict, run_dir: Path) -> None:
    from .rundir import write_json

    write_json(run_dir / "bill.json", bill)


def read_bill(run_dir: Path) -> dict:
    from .errors import RunDirError

    path = Path(run_dir) / "bill.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"'{run_dir}' has no bill.json: the run did not finish; `powertrain resume {run_dir}`") from None
    except json.JSONDecodeError:
        raise RunDirError(f"'{path}' is not valid JSON; the file was damaged") from None


def _si(x: Optional[float], unit: str = "") -> str:
    if x is None:
        return "-"
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def format_bill(bill: dict) -> str:
    """The bill as a plain-text table (also what `powertrain bill RUN` prints)."""
    t, e, m = bill["time_s"], bill["energy"], bill["mfu"]
    peak = m["peak"]
    rows = [
        ("parameters", f"{bill['params']:,}"),
        ("FLOPs / sample (forward)", _si(bill["flops"]["per_sample_forward"], "FLOP")),
        ("training FLOPs", f"{_si(bill['flops']['train_total'], 'FLOP')} over {bill['steps']:,} steps, "
                           f"{bill['samples_trained']:,} samples"),
        ("time", f"{t['total']:.2f} s (data {t['data']:.2f}, fwd+bwd {t['forward_backward']:.2f}, "
                 f"optimizer {t['optimizer']:.2f}, eval {t['eval']:.2f}, checkpoint {t['checkpoint']:.2f})"),
        ("throughput", f"{_si(bill['throughput']['samples_per_s'])} samples/s, "
                       f"{_si(bill['throughput']['model_flops_per_s'], 'FLOP/s')}"),
        ("MFU", (f"{m['value']:.2%} of {_si(peak['flops_per_s'], 'FLOP/s')} ({peak['device']}, {peak['dtype']}; "
                 f"{peak['source']})") if m["value"] is not None else m["note"]),
        ("peak memory", f"{_si(bill['peak_memory']['peak_bytes'], 'B')} ({bill['peak_memory']['method']})"),
        ("energy", f"{_si(e['total_j'], 'J')}  [{e['method']}]" if e["total_j"] is not None else "not measured"),
    ]
    for name, c in e.get("components", {}).items():
        rows.append((f"  {name}", f"{_si(c['energy_j'], 'J')}  [{c['method']}]"))
    rows += [
        ("J / training sample", _si(bill["j_per_train_sample"], "J")),
        ("J / inference sample", _si(bill["j_per_inference_sample"], "J")),
        ("CO2e", f"{bill['co2e_g']:.3g} g ({e['carbon']['intensity']['region']}, "
                 f"{e['carbon']['intensity']['g_per_kwh']:g} g/kWh, PUE {e['carbon']['pue']:g})"
         if bill["co2e_g"] is not None else "-"),
    ]
    if bill.get("cost"):
        rows.append(("cost", f"{bill['cost']['amount']:.4g} {bill['cost']['currency']}"))
    if bill.get("floor"):
        f = bill["floor"]
        eff = f" (this run: {f['efficiency']:.2%} of that efficiency)" if f.get("efficiency") else ""
        rows.append(("physical floor", f"{_si(f['energy_j'], 'J')} at peak FLOP/J{eff}"))
    estimated = e["method"] and "estimated" in e["method"]
    width = max(len(k) for k, _ in rows)
    lines = ["bill" + ("  (energy ESTIMATED: no counter readable here; see notes)" if estimated else "")]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    for note in e.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
