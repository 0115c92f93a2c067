"""The suite's own folders, named once: tests/conftest.py points the environment at them, and
tests/test_hardening_env.py checks it (a module of its own: `import conftest` may find another conftest)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_HOME = ROOT / "build" / "test-home"
SUITE_FOLDERS = {"POWERTRAIN_CACHE_DIR": "powertrain-cache", "XDG_CACHE_HOME": "xdg-cache",
                 "XDG_CONFIG_HOME": "xdg-config", "XDG_DATA_HOME": "xdg-data", "MPLCONFIGDIR": "matplotlib",
                 "KERAS_HOME": "keras"}  # keras writes keras.json into ~/.keras when it loads
USER_SETTINGS = ("POWERTRAIN_CACHE", "POWERTRAIN_DATA", "POWERTRAIN_CPU_W_PER_CORE")
