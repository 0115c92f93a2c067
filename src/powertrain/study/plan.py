"""Plan a training run before it happens: FLOPs from 6·N·D, time at an MFU, energy at a J/FLOP,
then CO2e and cost; and the Chinchilla compute-optimal split for a FLOP budget.

Every input that is assumed rather than measured is labelled in the output. With `from_run`, the
MFU and J/FLOP come from a measured run directory's bill.

>>> p = plan(params=7e9, tokens=140e9, device="h100", count=64)
>>> round(p["flops"] / 1e21, 2), p["mfu"]["source"].startswith("assumed")
(5.88, True)
"""
from __future__ import annotations

import math
import re
from typing import Optional

from ..errors import RecipeError
from ..measure import GPU_PEAKS, CarbonModel, grid_intensity, lookup_peak

ASSUMED_MFU = 0.40
MFU_SOURCE = ("assumed 0.40: well-tuned large-model training reaches 0.4-0.5 "
              "(PaLM 540B: 46.2% MFU, Chowdhery et al. 2022, Table 3)")
TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022 (Chinchilla): compute-optimal D ~ 20 N


def chinchilla(flops: float) -> dict:
    """Compute-optimal N and D for a budget C = 6·N·D with D = 20·N."""
    n = math.sqrt(flops / (6 * TOKENS_PER_PARAM))
    return {"params": n, "tokens": TOKENS_PER_PARAM * n, "flops": flops,
            "source": "Hoffmann et al. 2022 (Chinchilla): ~20 tokens per parameter, C = 6ND"}


def _calibration(from_run: str) -> dict:
    from ..run.rundir import RunDir, open_run

    path, _ = open_run(from_run)
    bill = RunDir(path).read("bill")
    mfu, energy, flops = bill["mfu"]["value"], bill["energy"]["total_j"], bill["flops"]["train_total"]
    if mfu is None or not energy or not flops:
        raise RecipeError(f"--from {from_run}: its bill lacks MFU, energy or FLOPs; train it to the end first")
    return {"mfu": mfu, "j_per_flop": energy / flops, "energy_method": bill["energy"]["method"],
            "device": bill["device"]["name"], "run": str(path)}


def _fit_calibration(fit: dict, path) -> dict:
    cal = fit["calibration"]
    if cal["mfu"] is None or not cal["j_per_flop"]:
        raise RecipeError(f"--from-fit {path}: its runs' bills lack MFU or energy")
    return {"mfu": cal["mfu"], "j_per_flop": cal["j_per_flop"], "energy_method": cal["energy_method"],
            "device": cal["device"], "run": f"the {cal['runs']} runs of {path}"}


def _chip(device: str) -> str:
    """'cpu: AMD EPYC (2 threads)' -> 'cpu: AMD EPYC': a CPU's J/FLOP does not depend on its thread count."""
    return re.sub(r" \(\d+ threads?\)$", "", device)


def plan(params: Optional[float] = None, tokens: Optional[float] = None, device: str = "h100", count: int = 1,
         dtype: Optional[str] = None, mfu: Optional[float] = None, from_run: Optional[str] = None,
         region: Optional[str] = None, pue: Optional[float] = None, price_per_kwh: Optional[float] = None,
         flops: Optional[float] = None, from_fit: Optional[str] = None) -> dict:
    """Predict FLOPs, time, energy, CO2e and cost of training N params on D tokens on count devices.
    With `from_fit` (a fit.json of `powertrain scale`): also the loss, N and D from the fitted law, and
    the MFU and J/FLOP measured in the fit's runs."""
    for flag, v in (("--params", params), ("--tokens", tokens), ("--flops", flops)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise RecipeError(f"plan: {flag} {v:g}: expected a positive number, e.g. --flops 1e21 or --params 7e9")
    notes = []
    fit = pred = None
    if from_fit:
        from .scalelaw import load_fit, predict

        if from_run:
            raise RecipeError("plan: --from and --from-fit both calibrate the cost; give one")
        fit = load_fit(from_fit)
        pred = predict(fit, params, tokens, flops)
        if params is None:
            notes.append("N and D are the compute-optimal split of the FLOP budget under the fitted law")
        params, tokens = pred["params"], pred["tokens"]
        reach = pred["flops"] / max(p["flops"] for p in fit["points"])
        if reach > 3:
            notes.append(f"the run is {reach:,.0f}x the FLOPs of the largest fitted run: the loss is an extrapolation far "
                         f"beyond what the back-test checked")
    if params is None and flops is None:
        raise RecipeError("plan: give --params N (with --tokens D) or a --flops budget")
    if params is None:
        opt = chinchilla(flops)
        params, tokens = opt["params"], opt["tokens"]
        notes.append("N and D are the compute-optimal split of the FLOP budget (Chinchilla)")
    if tokens is None:
        tokens = TOKENS_PER_PARAM * params
        notes.append(f"D not given: {TOKENS_PER_PARAM} tokens per parameter (Chinchilla)")
    total = pred["flops"] if pred else 6 * params * tokens
    is_cpu = device.strip().lower() == "cpu"
    dtype = dtype or ("fp32" if is_cpu else "bf16")
    cpu_power = None
    if is_cpu:  # this machine's CPU: its measured (cached) matmul peak, its estimated power
        from ..measure import cpu_peak, cpu_w_per_core

        if dtype not in ("fp32", "bf16", "fp16", "fp64"):
            raise RecipeError(f"--dtype {dtype}: the CPU's peak is measured for fp32, bf16, fp16 or fp64")
        peak = cpu_peak(dtype)
        w, w_source = cpu_w_per_core(peak.device)
        import torch

        cpu_power = (w * torch.get_num_threads(), f"{torch.get_num_threads()} threads x {w:g} W per core ({w_source})")
    else:
        peak = lookup_peak(device, dtype)
    if peak is None:
        known = ", ".join(s.device for s in GPU_PEAKS)
        raise RecipeError(f"--device '{device}' with --dtype {dtype}: no dense peak in the table; known: {known}")
    cal = _calibration(from_run) if from_run else _fit_calibration(fit, from_fit) if fit else None
    if cal and mfu is None:
        mfu_v, mfu_src = cal["mfu"], f"measured in {cal['run']} on {cal['device']}"
    elif mfu is not None:
        mfu_v, mfu_src = mfu, "given"
    else:
        mfu_v, mfu_src = ASSUMED_MFU, MFU_SOURCE
    if not 0 < mfu_v <= 1:
        raise RecipeError(f"--mfu: {mfu_v} is outside (0, 1]; MFU is a fraction of the peak")
    time_s = total / (count * peak.flops_per_s * mfu_v)
    if cal and _chip(cal["device"]) != _chip(peak.device):  # J/FLOP is a property of the chip it was measured on
        notes.append(f"MFU and J/FLOP were measured on {cal['device']}, not on {peak.device}: the MFU transfers between "
                     f"devices only roughly, the J/FLOP not at all (J/FLOP was measured on another device: not used)")
        cal = None
    if cal:
        energy_j, energy_src = total * cal["j_per_flop"], (f"J/FLOP of {cal['run']} (their energy: "
                                                           f"{cal['energy_method']})")
    elif cpu_power is not None:
        energy_j = count * cpu_power[0] * time_s
        energy_src = f"estimated: {count} x {cpu_power[0]:g} W = {cpu_power[1]} for the whole run"
    else:
        energy_j = count * peak.rated_power_w * time_s
        energy_src = (f"assumed: each of {count} devices draws its rated {peak.rated_power_w:g} W for the whole run "
                      f"(host CPUs, network and cooling not included; use --pue)")
    try:
        intensity = grid_intensity(float(region) if region and region.replace(".", "", 1).isdigit() else (region or "world"))
        carbon = CarbonModel(intensity=intensity, pue=pue or 1.0, price_per_kwh=price_per_kwh)
    except ValueError as e:
        raise RecipeError(f"--region/--pue: {e}") from None
    return {
        "params": params, "tokens": tokens, "flops": total,
        "flops_source": (f"{pred['k']:.3g} * N * D (k measured in the fit's runs)" if pred else
                         "6 * N * D (forward + backward)"),
        "loss": pred and {"value": pred["loss"], "interval_90": pred["loss_interval_90"], "fit": str(from_fit),
                          "backtest_max_abs_error": fit["backtest"]["max_abs_error"]},
        "device": peak.device, "count": count, "dtype": dtype, "peak": peak.to_dict(),
        "mfu": {"value": mfu_v, "source": mfu_src},
        "time_s": time_s, "device_hours": time_s * count / 3600,
        "energy_j": energy_j, "energy_source": energy_src, "kwh": carbon.kwh(energy_j),
        "co2e_g": carbon.co2e_g(energy_j), "carbon": carbon.to_dict(), "cost": carbon.cost(energy_j),
        "chinchilla": chinchilla(total), "notes": notes,
    }


def _mass(grams: float) -> str:
    """2.5 t / 31.4 kg / 12 g / 3.2 mg / 4.1 ug: never a plan rounded to nothing."""
    if grams >= 1e6:
        return f"{grams / 1e6:,.3g} t"
    for factor, unit in ((1e3, "kg"), (1.0, "g"), (1e-3, "mg")):
        if grams >= factor:
            return f"{grams / factor:.3g} {unit}"
    return f"{grams * 1e6:.3g} ug"


def human_time(seconds: float) -> str:
    """A duration in the unit that fits it: 420 ms, 12.5 s, 7.3 min, 5.2 h, 3.4 days, 2.1 years."""
    for limit, factor, unit in ((1e-3, 1e-6, "us"), (1.0, 1e-3, "ms"), (120, 1, "s"), (7200, 60, "min"),
                                (172800, 3600, "h"), (2 * 365.25 * 86400, 86400, "days")):
        if seconds < limit:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / (365.25 * 86400):,.3g} years"


def human_energy(joules: float) -> str:
    """Energy in the unit that fits it: 15 J, 2.4 Wh, 310 kWh, 4.2 GWh (1 Wh = 3600 J)."""
    if joules < 360:
        return f"{joules:.3g} J" if joules >= 1e-3 else f"{joules * 1e3:.3g} mJ"
    wh = joules / 3600
    for factor, unit in ((1e9, "TWh"), (1e6, "GWh"), (1e3, "MWh"), (1, "kWh")):
        if wh / 1e3 >= factor:
            return f"{wh / 1e3 / factor:,.3g} {unit}"
    return f"{wh:.3g} Wh"


def _money(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def format_plan(p: dict) -> str:
    opt = p["chinchilla"]
    loss = p.get("loss")
    lines = [
        f"plan: {p['params']:.3g} parameters on {p['tokens']:.3g} tokens, {p['count']} x {p['device']} ({p['dtype']})",
        f"  FLOPs            {p['flops']:.3g}  ({p['flops_source']})",
        f"  MFU              {p['mfu']['value']:.1%}  ({p['mfu']['source']})",
        f"  time             {human_time(p['time_s'])} ({human_time(p['time_s'] * p['count'])} of device time) at "
        f"{p['peak']['flops_per_s']:.3g} FLOP/s peak per device ({p['peak']['source']})",
        f"  energy           {human_energy(p['energy_j'] * p['carbon']['pue'])} at the facility ({p['energy_j']:.3g} J "
        f"at the device; {p['energy_source']}; "
        f"PUE {p['carbon']['pue']:g})",
        f"  CO2e             {_mass(p['co2e_g'])} ({p['carbon']['intensity']['region']}, "
        f"{p['carbon']['intensity']['g_per_kwh']:g} g/kWh; {p['carbon']['intensity']['source']})",
    ]
    if loss:
        iv = loss["interval_90"]
        lines.append(f"  loss             {loss['value']:.4f}" + (f" (90% interval {iv[0]:.4f} .. {iv[1]:.4f}, bootstrap)"
                                                                  if iv else "") +
                     f" from the fit {loss['fit']}; its back-test missed the held-out size by at most "
                     f"{loss['backtest_max_abs_error']:.1%}")
    if p["cost"] is not None:
        lines.append(f"  electricity cost {_money(p['cost'])} {p['carbon']['currency']}")
    lines.append(f"  {'Chinchilla rule' if loss else 'compute-optimal '} for the same FLOPs: {opt['params']:.3g} parameters on "
                 f"{opt['tokens']:.3g} tokens "
                 f"({opt['source']})")
    lines += [f"  note: {n}" for n in p["notes"]]
    return "\n".join(lines)
