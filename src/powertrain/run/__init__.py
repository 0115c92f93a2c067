"""The run directory, the contract between stages: RunDir (rundir.py) alone knows its layout, writes
every file atomically (atomic.py) and holds its lock; checkpoints (checkpoint.py), JSON files and the
metrics log (records.py), and the listing of runs under a folder (listing.py)."""
