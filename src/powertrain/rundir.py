"""The run directory, the contract between stages:

    recipe.yaml    the resolved recipe          env.json      versions, device, threads
    metrics.jsonl  one JSON object per log step eval.json     {"test": {...}, "val": {...}}
    checkpoints/   step-NNNNNNNN/ folders, best.safetensors
    vocab.json     the token vocabulary, for runs on text
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from .errors import RecipeError, RunDirError
from .recipe import Recipe, apply_overrides, parse_recipe


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def keep_vocab(path: Path, vocab) -> None:
    """vocab.json: the token vocabulary of a run on text (a `Vocab`), written when the run is created.
    A later stage (resume, eval, generate) rebuilds the data from the recipe; if that now gives another
    vocabulary (the corpus changed), the ids would mean other characters: refuse, naming both sizes."""
    f = path / "vocab.json"
    now = vocab.to_dict()
    if not f.is_file():
        write_json(f, now)
        return
    try:
        then = json.loads(f.read_text())
    except json.JSONDecodeError:
        raise RunDirError(f"'{f}' is not valid JSON; the file was damaged") from None
    if then != now:
        was = type(vocab)(**then).size
        raise RunDirError(f"'{f}': the run's data now gives another vocabulary ({vocab.size} tokens; the run was trained "
                          f"on {was}): its corpus changed since training; restore that corpus, or train a new run")


class MetricsLog:
    """Appends JSON lines to `path` (None: to nowhere). Between `open()` and `close()` the file stays
    open: a line costs a buffered write, not an open (~100 us at an epoch edge, where the caches are
    cold). Lines reach the OS at least every second and on `flush()`; the Trainer flushes before every
    checkpoint, so a killed run loses only lines after its last checkpoint, which a resume replays."""

    def __init__(self, path: Path | None):
        self.path, self._file, self._flushed = path, None, 0.0

    def open(self) -> None:
        if self.path is not None and self._file is None:
            self._file = open(self.path, "a")

    def write(self, record: dict) -> None:
        if self._file is None:
            if self.path is not None:
                append_jsonl(self.path, record)
            return
        self._file.write(json.dumps(record) + "\n")
        if time.monotonic() - self._flushed >= 1.0:  # `tail -f` sees lines within a second
            self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:  # only the last line may be cut short by a crash
                raise RunDirError(f"'{path}' line {i + 1} is not JSON; the file was edited or damaged") from None
    return records


def create(recipe: Recipe, out: str | Path | None, env: dict) -> Path:
    """Make a fresh run directory and write recipe.yaml and env.json into it."""
    path = Path(out or recipe.run.out or f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if path.exists() and any(path.iterdir()):
        if (path / "recipe.yaml").exists():
            raise RunDirError(f"run directory '{path}' already holds a run; continue it with "
                              f"`powertrain resume {path}` or pass another --out")
        raise RunDirError(f"--out '{path}' is a non-empty folder that is not a run; pass a new or empty folder")
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    write_json(path / "env.json", env)
    return path


def open_run(path: str | Path, overrides: list[str] | None = None) -> tuple[Path, Recipe]:
    """Check that `path` is a readable powertrain run directory; return it and its recipe."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory '{path}' does not exist; pass the folder that `powertrain train` printed")
    if not (path / "recipe.yaml").is_file() or not (path / "env.json").is_file():
        raise RunDirError(f"'{path}' is not a powertrain run directory (it lacks recipe.yaml or env.json); "
                          f"pass the folder that `powertrain train` printed")
    try:
        env = json.loads((path / "env.json").read_text())
        raw = yaml.safe_load((path / "recipe.yaml").read_text())
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunDirError(f"run directory '{path}' is corrupt: {type(e).__name__} in env.json or recipe.yaml") from None
    if not isinstance(env, dict) or "powertrain" not in env or not isinstance(raw, dict):
        raise RunDirError(f"'{path}' was not written by powertrain (env.json has no 'powertrain' version)")
    try:
        recipe = parse_recipe(apply_overrides(raw, list(overrides or [])))
    except RecipeError as e:
        raise RunDirError(f"'{path / 'recipe.yaml'}' is invalid: {e}") from None
    return path, recipe


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics.jsonl records written after `step` (they are replayed by a resume)."""
    records = [r for r in read_jsonl(path / "metrics.jsonl") if r["step"] <= step]
    tmp = path / ".metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path / "metrics.jsonl")
