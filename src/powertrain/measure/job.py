"""One bill per job: the Meter totals of every rank merged into the job's (a collective in a job).

Time and window counts are rank 0's (wall time); FLOPs, energy per component and CO2e are summed over
the ranks, where local rank 0 of each node alone read the node's counters (RAPL, NVML) and every rank
its own process estimate, so nothing is counted twice.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from .energy import EstimateBackend, combine_methods
from .meter import Meter, WindowTotals


def node_scope(backend) -> bool:
    """Whether an energy backend reads a counter of the whole node (RAPL, NVML: read by local rank 0
    only) rather than of this process (the CPU-seconds estimate: read, and summed, on every rank)."""
    scope = getattr(backend, "scope", None)
    if scope is not None:
        return scope == "node"
    return not isinstance(backend, EstimateBackend)


def drop_node_counters(meter) -> None:
    """On a rank that is not local rank 0: stop reading node-wide counters, which local rank 0 reads
    for the whole node (CodeCarbon, which reads them on every rank, reports N times the energy)."""
    keep = []
    for b in meter.backends:
        if node_scope(b):
            b.close()
        else:
            keep.append(b)
    meter.backends = keep


def merge_meter_states(states: list[dict]) -> dict:
    """One Meter state for the job from every rank's `Meter.state_dict()`."""
    merged = {"version": 1, "totals": {}}
    for i, state in enumerate(states):
        for name, t in state["totals"].items():
            m = merged["totals"].setdefault(name, {"name": name, "count": 0, "time_s": 0.0, "flops": None,
                                                   "co2e_g": None, "energy": {}})
            if i == 0:
                m["count"], m["time_s"] = t["count"], t["time_s"]
            if t["flops"] is not None:
                m["flops"] = (m["flops"] or 0) + t["flops"]
            if t["co2e_g"] is not None:
                m["co2e_g"] = (m["co2e_g"] or 0.0) + t["co2e_g"]
            for comp, c in t["energy"].items():
                e = m["energy"].setdefault(comp, {"energy_j": 0.0, "method": c["method"], "above_idle_j": None})
                e["energy_j"] += c["energy_j"]
                if c["method"] != e["method"]:
                    e["method"] = combine_methods([e["method"], c["method"]])
                if c.get("above_idle_j") is not None:
                    e["above_idle_j"] = (e["above_idle_j"] or 0.0) + c["above_idle_j"]
    return merged


def job_totals(meter: Optional[Meter], gather: Optional[Callable[[Any], list]] = None) -> dict[str, WindowTotals]:
    """The totals a bill is made of: this process's, or in a job the job's. `gather(obj)` returns every
    rank's obj, rank 0's first (e.g. train/distributed.gather_objects): a collective, so every rank calls
    this. No `gather`: one process."""
    if gather is None:
        return meter.totals() if meter else {}
    states = gather(meter.state_dict() if meter else None)
    if states[0] is None:
        return {}
    return {k: WindowTotals.from_dict(v) for k, v in merge_meter_states(states)["totals"].items()}
