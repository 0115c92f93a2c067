import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / "build" / "inductor"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_digits():
    """A small deterministic multiclass problem (sklearn digits) as a DataBundle."""
    from powertrain import data

    return data.build({"name": "digits"}, seed=0)
