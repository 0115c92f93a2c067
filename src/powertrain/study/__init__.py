"""Studies over many runs: sweeps (sweep.py over a search space, space.py; summary.py), scaling laws
(scale.py runs them, scalelaw.py fits them) and the cost plan of a run not yet made (plan.py)."""
