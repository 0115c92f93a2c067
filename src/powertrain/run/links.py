"""RunDir's guard against symbolic links: nothing is read or written through a link that leads out of the
run directory (a picture linked to the system's password file, a checkpoints folder linked elsewhere, a lock
file linked to a file it would truncate). A mixin of RunDir (rundir.py), split out to keep that file short.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import RunDirError

EXTRA = ("export", "wandb", "wandb.json")  # folders and files of a run that are no RunDir property


class Links:
    """Mixin of RunDir: `outside`, `guard`, `check_links`."""

    path: Path

    def outside(self, path: Path) -> Optional[Path]:
        """Where `path` really leads when a symbolic link in it leads out of the run directory, else None."""
        try:
            root, real = self.path.resolve(), Path(path).resolve()
        except (OSError, RuntimeError):  # a loop of links
            return Path(path)
        return None if real == root or real.is_relative_to(root) else real

    def guard(self, path: Path) -> Path:
        """`path`, or a one-line RunDirError when a symbolic link in it leads out of the run directory."""
        real = self.outside(path)
        if real is not None:
            raise RunDirError(f"'{path}' is a symbolic link (or lies under one) that leads to '{real}', outside the "
                              f"run directory '{self.path}'; powertrain neither reads nor writes through it: remove "
                              f"the link")
        return path

    def check_links(self) -> None:
        """Every file and folder powertrain reads or writes here (and every checkpoint) stays inside the run."""
        for name in dir(type(self)):
            if isinstance(getattr(type(self), name, None), property) and name not in ("kind", "started"):
                value = getattr(self, name)
                if isinstance(value, Path) and (value.exists() or value.is_symlink()):
                    self.guard(value)
        for extra in (*(self.path / e for e in EXTRA), *self._checkpoint_entries()):
            if extra.exists() or extra.is_symlink():
                self.guard(extra)

    def _checkpoint_entries(self) -> list[Path]:
        if not self.checkpoints.is_dir() or self.outside(self.checkpoints) is not None:
            return []
        return list(self.checkpoints.iterdir())
