"""Issue 21: the suite neither depends on nor writes into the user's cache or home (tests/conftest.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import suite_env as conftest  # the names tests/conftest.py sets the environment from
from powertrain import settings


def _under(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_the_suite_reads_and_writes_its_own_cache_and_config_folders():
    assert _under(settings.cache_dir(), conftest.TEST_HOME)
    assert not _under(settings.cache_dir(), Path.home() / ".cache")
    for var in conftest.SUITE_FOLDERS:
        assert _under(Path(os.environ[var]), conftest.TEST_HOME), var
    for var in conftest.USER_SETTINGS:
        assert var not in os.environ, var
    import matplotlib

    assert _under(Path(matplotlib.get_configdir()), conftest.TEST_HOME)


def test_a_child_process_inherits_the_suites_folders():
    out = subprocess.run([sys.executable, "-c", "from powertrain import settings; print(settings.cache_dir())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert _under(Path(out), conftest.TEST_HOME), out


def test_a_run_writes_nothing_into_home(tmp_path):
    """HOME is an empty folder: a whole `powertrain train` (its bill measures or reads the peak) leaves it empty."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "powertrain", "train", "xor", "train.epochs=2", "--out",
                        str(tmp_path / "run"), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "bill.json").is_file()
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []
