"""The run directory, the contract between stages. `RunDir` alone knows its layout:

    recipe.yaml    the resolved recipe                 env.json      versions, device, threads
    metrics.jsonl  one JSON object per log step, evaluation and epoch window
    eval.json      {"test": {...}, "val": {...}, "stop_reason", "step"}: written when training ended
    bill.json      the bill (FLOPs, time, MFU, memory, energy, CO2e): written with eval.json
    checkpoints/   step-NNNNNNNN/{model.safetensors,state.pt}, best.safetensors, quantized.safetensors
    vocab.json     the token vocabulary, for runs on text
    derived.json   {"parent", "method", "settings", "report"} of a pruned or quantized run
    init_from.json what `model.init_from` loaded (transfer learning)
    explain.json   `powertrain explain RUN`: attributions' checks and bill (explain.png: the picture)
    audit.json     `powertrain audit RUN`: a membership-inference attack (audit-roc.png: its ROC curve)
    .lock          held (flock) by the one process that writes the run; holds its PID
    tensorboard/   TensorBoard event files (run.tensorboard)    mlflow.json   the MLflow run it logs to (run.mlflow)
    report.html    `powertrain report RUN`; *.png         pictures: reconstructions, samples, explanations

Every file is written atomically by `atomic_write` (temp file, fsync of the file, rename, fsync of the
folder). Other modules ask a RunDir for paths; none spells one.

>>> import tempfile; from powertrain.run.rundir import RunDir
>>> run = RunDir(tempfile.mkdtemp()); run.checkpoint(40).name
'step-00000040'
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import yaml

from .atomic import atomic_write, dumps, write_json
from .records import MetricsLog, read_json, read_jsonl
from .checkpoint import validate as validate_checkpoint
from .links import Links
from .state import CHECKPOINT_PREFIX, RunState
from .storage import write_failure
from ..errors import RecipeError, RunDirError
from ..recipe.strict import clean_name, load_yaml



# ---------------------------------------------------------------- the run directory
class RunDir(Links, RunState):
    """One run directory: its paths, files, lock, kind and final weights."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: Optional[int] = None

    def __repr__(self) -> str:
        return f"RunDir('{self.path}')"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- layout ------------------------------------------------------------------------------
    recipe_file = property(lambda self: self.path / "recipe.yaml")
    env_file = property(lambda self: self.path / "env.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    eval_file = property(lambda self: self.path / "eval.json")
    bill_file = property(lambda self: self.path / "bill.json")
    vocab_file = property(lambda self: self.path / "vocab.json")
    derived_file = property(lambda self: self.path / "derived.json")
    init_report_file = property(lambda self: self.path / "init_from.json")  # what model.init_from loaded
    lock_file = property(lambda self: self.path / ".lock")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_weights = property(lambda self: self.path / "checkpoints" / "best.safetensors")
    quantized_weights = property(lambda self: self.path / "checkpoints" / "quantized.safetensors")
    explain_file = property(lambda self: self.path / "explain.json")  # `powertrain explain RUN`: maps' checks and bill
    explain_picture = property(lambda self: self.path / "explain.png")  # ... its picture
    audit_file = property(lambda self: self.path / "audit.json")  # `powertrain audit RUN`: membership inference
    audit_picture = property(lambda self: self.path / "audit-roc.png")  # ... its ROC curve
    report_file = property(lambda self: self.path / "report.html")  # `powertrain report RUN` (default --out)
    tensorboard_dir = property(lambda self: self.path / "tensorboard")  # event files (run.tensorboard)
    mlflow_file = property(lambda self: self.path / "mlflow.json")  # {"tracking_uri", "experiment_id", "run_id"}

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"

    def list_checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first (temp folders of an interrupted write are not listed)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))

    def prune_checkpoints(self, keep: int) -> None:
        """Keep the newest `keep` checkpoints; remove temp folders left by killed writes."""
        for old in self.list_checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in [*self.checkpoints.glob(".tmp-*"), *self.checkpoints.glob(".dcp-*")]:
            if not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)
        for stale in self.checkpoints.glob(".old-*"):
            shutil.rmtree(stale, ignore_errors=True)

    # -- making and opening --------------------------------------------------------------------
    @staticmethod
    def default_path(name: str, root: str | Path = "runs") -> Path:
        """runs/<name>-<timestamp>, made (empty) here so that two runs started in the same second
        get two folders: the second gets a -2 suffix. The name is cleaned (`clean_name`): it cannot leave
        `root`."""
        base = Path(root) / f"{clean_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
        base.parent.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            path = base if i == 1 else base.with_name(f"{base.name}-{i}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
        raise RunDirError(f"'{base}': 999 runs of this name started this second; pass --out")

    @classmethod
    def create(cls, recipe, out: str | Path | None, env: dict, derived: Optional[dict] = None) -> "RunDir":
        """A fresh run directory with recipe.yaml, env.json (and derived.json), locked by this process.
        On any failure nothing of it is left behind."""
        path = Path(out) if out else cls.default_path(recipe.name)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"--out '{path}' is a file; pass a folder (new or empty)")
        if path.exists() and any(path.iterdir()):
            holder = cls(path).writer_pid()
            if holder is not None:  # another train or resume writes it now: not a run to resume yet
                raise RunDirError(f"run directory '{path}' is in use by process {holder if holder > 0 else '(unknown)'} "
                                  f"(a train or resume of it, running now); wait for it to end, or pass another --out")
            if (path / "recipe.yaml").exists():
                raise RunDirError(f"run directory '{path}' already holds a run; continue it with "
                                  f"`powertrain resume {path}` or pass another --out")
            raise RunDirError(f"--out '{path}' is a non-empty folder that is not a run; pass a new or empty folder")
        existed = out is not None and path.exists()
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path).lock()  # a second writer stops here, and leaves the folder to its holder
        try:
            run.checkpoints.mkdir(exist_ok=True)
            run.write_recipe(recipe)
            write_json(run.env_file, env)
            if derived is not None:
                write_json(run.derived_file, derived)
        except BaseException:
            if existed:  # an empty folder the user gave: keep it, empty
                run.unlock()
                for p in path.iterdir():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            else:
                run.remove()
            raise
        return run

    def remove(self) -> None:
        """Delete a run directory that this process made and that holds nothing worth keeping."""
        self.unlock()
        shutil.rmtree(self.path, ignore_errors=True)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """A readable powertrain run directory, or a one-line RunDirError."""
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"run directory '{path}' does not exist; pass the folder that `powertrain train` printed")
        run = cls(path)
        if not run.recipe_file.is_file() or not run.env_file.is_file():
            raise RunDirError(f"'{path}' is not a powertrain run directory (it lacks recipe.yaml or env.json); "
                              f"pass the folder that `powertrain train` printed")
        run.check_links()
        env = read_json(run.env_file)
        if not isinstance(env, dict) or "powertrain" not in env:
            raise RunDirError(f"'{path}' was not written by powertrain (env.json has no 'powertrain' version)")
        return run

    def raw_recipe(self) -> dict:
        try:
            raw = load_yaml(self.recipe_file.read_text(encoding="utf-8"), f"'{self.recipe_file}'")
        except (yaml.YAMLError, UnicodeDecodeError, RecipeError) as e:
            raise RunDirError(f"'{self.recipe_file}' is corrupt ({type(e).__name__}); the file was damaged") from None
        if not isinstance(raw, dict):
            raise RunDirError(f"'{self.recipe_file}' is not a recipe (a YAML mapping); the file was damaged")
        return raw

    def recipe(self, overrides: Optional[list[str]] = None):
        """The run's recipe, with `overrides` applied (nothing is written)."""
        from ..recipe import apply_overrides, parse_recipe

        try:
            return parse_recipe(apply_overrides(self.raw_recipe(), list(overrides or [])))
        except RecipeError as e:
            if overrides:
                raise
            raise RunDirError(f"'{self.recipe_file}' is invalid: {e}") from None

    def write_recipe(self, recipe) -> None:
        atomic_write(self.recipe_file, lambda tmp: tmp.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False)))

    # -- the writer's lock -----------------------------------------------------------------------
    def lock(self) -> "RunDir":
        """Hold the run's lock (released when this process ends, even by SIGKILL); a second writer
        gets one line naming the holder's PID."""
        if self._lock_fd is not None:
            return self
        self.check_links()  # a writer writes nothing through a link that leads out of the run
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its PID right after it takes the lock
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.05)
            holder = holder or "(unknown)"
            os.close(fd)
            raise RunDirError(f"run directory '{self.path}' is in use by process {holder} (a train or resume of this "
                              f"run); wait for it to end, or stop it, then try again") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- files ---------------------------------------------------------------------------------
    def write(self, name: str, obj) -> None:
        """Write one of the run's JSON files ("eval", "bill", "derived", "vocab") atomically; a failed write
        (a full disk) is one WriteError line naming what is kept and how to go on."""
        path = getattr(self, f"{name}_file")
        try:
            write_json(path, obj)
        except OSError as e:
            raise write_failure(e, path) from None

    def read(self, name: str, required: bool = True):
        return read_json(getattr(self, f"{name}_file"), required)

    def metrics_log(self) -> MetricsLog:
        return MetricsLog(self.metrics_file)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_file)

    def truncate_metrics(self, step: int, size: Optional[int] = None) -> None:
        """Drop metrics.jsonl lines written after a checkpoint (a resume replays them): those after byte
        `size` (the file's length when the checkpoint was taken), or, for a checkpoint that does not know
        it, the records of steps after `step`."""
        if size is not None and self.metrics_file.exists():
            os.truncate(self.metrics_file, min(size, self.metrics_file.stat().st_size))
            return
        records = [r for r in self.metrics() if r["step"] <= step]
        atomic_write(self.metrics_file, lambda tmp: tmp.write_text("".join(dumps(r) + "\n" for r in records)))

    def append_metrics(self, record: dict) -> None:
        MetricsLog(self.metrics_file).write(record)

    def keep_vocab(self, vocab) -> None:
        """vocab.json: written when a run on text is created. A later stage rebuilds the data from the
        recipe; if that now gives another vocabulary (the corpus changed), the ids would mean other
        characters: refuse, naming both sizes."""
        now = vocab.to_dict()
        then = self.read("vocab", required=False)
        if then is None:
            self.write("vocab", now)
        elif then != now:
            was = type(vocab)(**then).size
            raise RunDirError(f"'{self.vocab_file}': the run's data now gives another vocabulary ({vocab.size} tokens; "
                              f"the run was trained on {was}): its corpus changed since training; restore that corpus, "
                              f"or train a new run")

    # -- what kind of run, and which weights are final ----------------------------------------------
    @property
    def kind(self) -> str:
        """'quantized' or 'pruned' (derived.json), 'distilled' (train.distill), 'transferred'
        (model.init_from), else 'trained'."""
        derived = self.read("derived", required=False)
        if derived:
            return {"quantize": "quantized", "prune": "pruned"}.get(derived.get("method"), str(derived.get("method")))
        raw = self.raw_recipe()
        if (raw.get("train") or {}).get("distill"):
            return "distilled"
        if (raw.get("model") or {}).get("init_from"):
            return "transferred"
        return "trained"

    def parent(self) -> Optional[str]:
        derived = self.read("derived", required=False)
        return (derived or {}).get("parent") or (self.raw_recipe().get("run") or {}).get("parent")

    def final_weights(self, checkpoint: Optional[str] = None) -> Path:
        """The weights the run's metrics are about: `checkpoint` (a step-N name) if given; else the int8
        file of a quantized run, best.safetensors under early stopping with restore_best, or the newest
        checkpoint folder. The newest checkpoint must be whole: a damaged one is refused, naming the file
        and the older checkpoint to ask for instead."""
        if checkpoint:
            path = self.checkpoints / checkpoint
            if checkpoint == self.best_weights.name and path.is_file():
                return self.guard(path)
            if "/" in checkpoint or checkpoint.startswith(".") or not path.is_dir():
                have = ", ".join(p.name for p in self.list_checkpoints()) or "none"
                raise RunDirError(f"--checkpoint '{checkpoint}': no such checkpoint in '{self.checkpoints}' (have: {have})")
            validate_checkpoint(self.guard(path))
            return path
        pid = self.writer_pid()
        if pid is not None and pid != os.getpid():  # another process trains it: its final weights do not exist yet
            whole = self.newest_whole()
            use = (f"its newest whole checkpoint is {whole}: pass --checkpoint {whole} to use it, or wait for it to end"
                   if whole else "it has no whole checkpoint yet: wait for one, or for the run to end")
            raise RunDirError(f"run '{self.path}' is training (process {pid}): its final weights are written when "
                              f"training ends; {use}")
        if self.kind == "quantized":
            if not self.quantized_weights.is_file():
                raise RunDirError(f"'{self.quantized_weights}' is missing; quantize the parent again")
            return self.quantized_weights
        es = (self.raw_recipe().get("train") or {}).get("early_stop") or {}
        if es and es.get("restore_best", True) and self.best_weights.is_file():
            return self.best_weights
        model = self.raw_recipe().get("model") or {}
        if model.get("name") == "external":  # powertrain.track or an integrations BillCallback wrote it
            raise RunDirError(f"'{self.path}' was trained by {model.get('framework', 'another framework')} outside "
                              f"powertrain; its weights are with that framework (powertrain keeps its bill, metrics "
                              f"and eval.json)")
        found = self.list_checkpoints()
        if not found:
            raise RunDirError(f"'{self.path}' has no checkpoint yet; finish it with `powertrain resume {self.path}`")
        try:
            validate_checkpoint(found[-1])
        except RunDirError as e:
            older = f"; to use the older one pass --checkpoint {found[-2].name}" if len(found) > 1 else ""
            raise RunDirError(f"{e}{older}") from None
        return found[-1]

    def newest_whole(self) -> Optional[str]:
        """The name of the newest checkpoint that is whole now (validated), else None."""
        for path in reversed(self.list_checkpoints()):
            try:
                validate_checkpoint(path)
                return path.name
            except RunDirError:
                continue
        return None

    def weights_label(self, weights: Path) -> dict:
        """What a derived run records of the parent's weights it started from: {"weights", "step"}."""
        name = Path(weights).name if Path(weights).parent == self.checkpoints else str(weights)
        step = int(name[len(CHECKPOINT_PREFIX):]) if name.startswith(CHECKPOINT_PREFIX) else None
        if step is None and name == self.best_weights.name:
            ev = self.read("eval", required=False) or {}
            return {"weights": name, "step": None, "note": f"early stopping's best weights of a run that stopped at "
                                                            f"step {ev.get('step')}"}
        return {"weights": name, "step": step}

    # -- what a reader sees: pictures, state, age ----------------------------------------------------
    PICTURE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")

    def pictures(self) -> list[Path]:
        """Pictures the run holds (reconstructions, samples, explanations, an audit's ROC...): image files
        in the run directory and its subfolders, but not in checkpoints/ or tensorboard/, and none reached
        through a symbolic link that leads out of the run."""
        skip = {self.checkpoints.name, self.tensorboard_dir.name}
        found = [p for p in self.path.rglob("*") if p.suffix.lower() in self.PICTURE_SUFFIXES and p.is_file()
                 and not p.name.startswith(".") and p.relative_to(self.path).parts[0] not in skip
                 and self.outside(p) is None]  # a link that leads out of the run is not followed
        return sorted(found, key=lambda p: str(p.relative_to(self.path)))

    @property
    def started(self) -> float:
        """When the run was made (env.json's modification time, which nothing rewrites), as a Unix time."""
        f = self.env_file if self.env_file.exists() else self.path
        return f.stat().st_mtime

def open_run(path: str | Path, overrides: Optional[list[str]] = None):
    """(path, recipe) of a readable run directory; the recipe with `overrides` applied (nothing written)."""
    run = RunDir.open(path)
    return run.path, run.recipe(overrides)
