"""`powertrain sweep RECIPE --space SPACE.yaml`: an Optuna study whose trials are ordinary runs.

    SWEEP_DIR/sweep.json     what was asked: recipe, overrides, space, objectives, target, trials, storage
    SWEEP_DIR/journal.log    the Optuna study (JournalFileBackend), unless --storage names a database
    SWEEP_DIR/trials/trial-NNNN/   one run directory per trial (recipe.yaml, metrics, eval.json, bill.json)
    SWEEP_DIR/baseline/      the recipe as it is (--baseline), to compare the chosen trial with
    SWEEP_DIR/summary.json, front.png   the trials, the Pareto front, the chosen trial (summary.py)

Objectives are read from each trial's eval.json (a metric on `split`, val by default: choosing on the
test split would leak it) and bill.json (energy_j, flops, time_s, params, co2e_g). Multi-objective
studies cannot prune in Optuna, so each trial has a twin in a single-objective "pruning" study of the
first metric, to which it reports its validation metric after each evaluation; when the twin's pruner
(median) says so, training stops at that boundary and the trial is PRUNED, with its bill kept.

Workers: any number of processes (`--workers N`, or `powertrain sweep --resume DIR` on other machines
with a shared `--storage` URL) pull trials from one study. A lock file in SWEEP_DIR makes "count the
trials, ask for one" atomic among the workers of one machine. A trial whose worker died (its PID gone on
this host) is failed and enqueued again with the same parameters; its run is resumed from its checkpoint.
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import uuid
import warnings
import zlib
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..run.atomic import write_json
from ..train.callbacks import Callback
from ..errors import PowertrainError, RecipeError, RunDirError
from ..settings import usable_cpus
from ..run.records import read_json
from . import journal
from .space import Dim, check_space, parse_space
from .summary import COSTS, measured, summarize, value_of

HOST = socket.gethostname()


def _optuna():
    try:
        import optuna
    except ImportError:
        raise PowertrainError("powertrain sweep needs Optuna: pip install 'powertrain[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def parse_objectives(texts: list[str]) -> list[tuple[str, str]]:
    """['accuracy:max', 'energy_j:min'] -> [('accuracy', 'maximize'), ('energy_j', 'minimize')]."""
    out = []
    for t in texts:
        name, _, way = t.partition(":")
        if way not in ("max", "min") or not name:
            raise RecipeError(f"--objectives {t}: expected NAME:max or NAME:min, e.g. accuracy:max energy_j:min")
        out.append((name, "maximize" if way == "max" else "minimize"))
    if not any(n not in COSTS for n, _ in out):
        raise RecipeError(f"--objectives: name a metric to judge trials by (e.g. accuracy:max), beside costs "
                          f"({', '.join(COSTS)})")
    return out


def parse_target(text: Optional[str]) -> Optional[tuple[str, str, float]]:
    """'accuracy>=0.94' -> ('accuracy', '>=', 0.94)."""
    if not text:
        return None
    for op in (">=", "<="):
        name, sep, value = text.partition(op)
        if sep:
            try:
                return name.strip(), op, float(value)
            except ValueError:
                break
    raise RecipeError(f"--target {text}: expected METRIC>=VALUE or METRIC<=VALUE, e.g. accuracy>=0.94")


class Pruning(Callback):
    """Reports the validation metric to the trial's twin after each evaluation (step: samples seen),
    and stops training at this boundary when its pruner says so."""

    def __init__(self, twin, metric: str):
        self.twin, self.metric, self.pruned_at = twin, metric, None

    def on_eval_end(self, trainer, split, metrics) -> None:
        if (split != "val" or self.twin is None or self.metric not in metrics or self.pruned_at is not None
                or trainer.step >= trainer.total_steps):  # the last evaluation, or the one after pruning
            return
        self.twin.report(float(metrics[self.metric]), trainer.step * trainer.cfg.batch_size)
        if self.twin.should_prune():
            trainer.stop_reason, self.pruned_at, self.planned_steps = "pruned", trainer.step, trainer.total_steps


class Sweep:
    """A sweep directory and its study. `Sweep.create` writes sweep.json; `Sweep(path)` opens one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file, self.trials_dir = self.path / "sweep.json", self.path / "trials"
        if not self.config_file.is_file():
            raise RunDirError(f"'{self.path}' is not a sweep directory (no sweep.json); start one with powertrain sweep "
                              f"RECIPE --space SPACE.yaml")
        self.cfg = read_json(self.config_file)
        self.dims: list[Dim] = parse_space(self.cfg["space"], str(self.config_file))
        self.objectives = [tuple(o) for o in self.cfg["objectives"]]
        self.metric = next((n, d) for n, d in self.objectives if n not in COSTS)
        self._studies = None
        self.worker = False  # a process started by --workers: its sampler gets its own seed

    @classmethod
    def create(cls, recipe: str, space: dict, *, overrides=(), out=None, trials=20, objectives=("accuracy:max",
               "energy_j:min"), target=None, split="val", storage=None, seed=0, pruner="median",
               baseline=False) -> "Sweep":
        from ..recipe import read_raw, apply_overrides, load_recipe

        base = apply_overrides(read_raw(recipe), list(overrides))
        name = load_recipe(base).name
        dims = parse_space(space, "--space")
        check_space(dims, base, "--space")
        objs = parse_objectives(list(objectives))
        tgt = parse_target(target)
        if tgt and tgt[0] in COSTS:
            raise RecipeError(f"--target {target}: a target is a bar on a metric (e.g. accuracy>=0.94); the costs "
                              f"({', '.join(COSTS)}) are what the sweep makes small")
        if tgt and tgt[0] not in [n for n, _ in objs]:
            raise RecipeError(f"--target {target}: '{tgt[0]}' is not one of the objectives ({', '.join(n for n, _ in objs)})")
        if trials < 1:
            raise RecipeError(f"--trials {trials}: expected a whole number >= 1")
        if pruner not in ("median", "none"):
            raise RecipeError(f"--pruner {pruner}: expected median or none")
        path = Path(out) if out else Path("sweeps") / name
        if (path / "sweep.json").exists():
            raise RunDirError(f"'{path}' already holds a sweep; continue it with powertrain sweep --resume {path}, "
                              f"or pass another --out")
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "sweep.json", {
            "recipe": str(recipe), "overrides": list(overrides), "base": base, "space": space,
            "objectives": objs, "target": list(tgt) if tgt else None, "split": split, "trials": trials,
            "storage": storage, "study": f"powertrain-{name}-{uuid.uuid4().hex[:8]}",  # unique in a shared database
            "seed": seed, "pruner": pruner, "baseline": baseline})
        return cls(path)

    # -- the study ---------------------------------------------------------------------------------
    def studies(self):
        """(study, pruning twin): created on first use, loaded by every later worker."""
        if self._studies is None:
            optuna = _optuna()
            cfg = self.cfg
            storage = self._storage(optuna)
            study = optuna.create_study(study_name=cfg["study"], storage=storage, load_if_exists=True,
                                        directions=[d for _, d in self.objectives])
            # the sweep's seed for the first process only: a resumed or joining one reseeded alike would
            # draw the same random start-up settings as the trials already in the study
            n = len(study.get_trials(deepcopy=False))
            seed = (cfg["seed"] if n == 0 and not self.worker
                    else zlib.crc32(f"{cfg['seed']}-{n}-{HOST}-{os.getpid()}".encode()))
            study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, cfg["trials"]))
            pruner = (optuna.pruners.MedianPruner(n_startup_trials=4, n_min_trials=3) if cfg["pruner"] == "median"
                      else optuna.pruners.NopPruner())
            twin = optuna.create_study(study_name=cfg["study"] + "-pruning", storage=storage, load_if_exists=True,
                                       direction=self.metric[1], pruner=pruner)
            self._studies = (study, twin)
        return self._studies

    def _storage(self, optuna):
        url = self.cfg["storage"]
        if not url:
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

            f = str(self.path / "journal.log")
            with self._asking():  # no other worker of this machine asks while the journal is checked
                note = journal.repair(Path(f))  # a cut-short last record dropped; other damage: one line
            if note:
                print(f"powertrain: {note}", file=sys.stderr, flush=True)
            return JournalStorage(JournalFileBackend(f, lock_obj=JournalFileOpenLock(f)))
        if url.startswith(("postgresql", "mysql", "sqlite")):  # another machine's dead worker: Optuna's heartbeat
            with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        return url

    def _constrain(self, trial, m: dict) -> None:
        """The target as an Optuna constraint (<= 0: reached), which steers the sampler to feasible trials."""
        if not self.cfg["target"]:
            return
        name, op, bound = self.cfg["target"]
        v = value_of(m, name, self.cfg["split"])
        trial.set_constraint("target", 1.0 if v is None else (bound - v if op == ">=" else v - bound))

    @contextmanager
    def _asking(self):
        with open(self.path / ".ask.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _reclaim(self, study, twin) -> None:
        """Trials RUNNING for a worker of this host that no longer lives: FAIL, and enqueue them again."""
        optuna = _optuna()
        from optuna.storages._heartbeat import is_heartbeat_enabled

        # a database's heartbeat (run_trial beats) finds dead workers of any machine; a PID those of this one
        stale = set(study._storage._get_stale_trial_ids(study._study_id)) if is_heartbeat_enabled(study._storage) else set()
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
            unnamed = pid is None and t.datetime_start is not None and (datetime.now() - t.datetime_start).total_seconds() > 60
            # (a worker names itself right after ask: one that did not within a minute died in between)
            if t._trial_id not in stale and not unnamed and (host != HOST or pid is None or _alive(pid)):
                continue
            optuna.trial.Trial(study, t._trial_id).set_user_attr("lost", f"worker {pid} on {host} died")
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            if "twin" in t.user_attrs:
                twin.tell(t.user_attrs["twin"], state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "retry_dir": t.user_attrs.get("run_dir")})

    def _next_trial(self):
        optuna = _optuna()
        study, twin = self.studies()
        S = optuna.trial.TrialState
        with self._asking():
            self._reclaim(study, twin)
            trials = study.get_trials(deepcopy=False)
            if sum(t.state in (S.COMPLETE, S.PRUNED, S.RUNNING) for t in trials) >= self.cfg["trials"]:
                return None
            if sum(t.state == S.FAIL and "lost" not in t.user_attrs for t in trials) >= self.cfg["trials"]:
                raise PowertrainError(f"sweep {self.path}: {self.cfg['trials']} trials failed; see their errors in "
                                      f"powertrain sweep --resume {self.path} --summary")
            with warnings.catch_warnings():  # "Heartbeat ... used with Study.optimize": work() beats itself
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
                trial.set_user_attr("host", HOST)
                trial.set_user_attr("pid", os.getpid())
                shadow = twin.ask()
                trial.set_user_attr("twin", shadow.number)
        return trial, shadow

    # -- running trials ------------------------------------------------------------------------------
    def work(self, say=print) -> int:
        """Run trials until the study has enough; returns how many this worker ran."""
        from optuna.storages._heartbeat import get_heartbeat_thread

        n = 0
        warm_up(self.path)  # this process's start-up is billed to no trial
        while (got := self._next_trial()) is not None:
            with get_heartbeat_thread(got[0]._trial_id, self.studies()[0]._storage):  # a database's heartbeat
                self.run_trial(*got, say=say)
            n += 1
        return n

    def run_trial(self, trial, shadow, say=print) -> None:
        from ..train import lifecycle

        optuna = _optuna()
        study, twin = self.studies()
        own = _suggest(self.dims, trial)  # the trial's keys; the sweep's own overrides are in cfg["base"]
        trial.set_user_attr("overrides", own)
        retry = trial.user_attrs.get("retry_dir")
        out = self.trials_dir / f"trial-{trial.number:04d}"
        cb = Pruning(shadow if self.cfg["pruner"] != "none" else None, self.metric[0])
        try:
            if retry and (Path(retry) / "checkpoints").is_dir() and any((Path(retry) / "checkpoints").iterdir()):
                out = Path(retry)
                trial.set_user_attr("run_dir", str(out))
                lifecycle.resume(out, callbacks=[cb])
            else:
                trial.set_user_attr("run_dir", str(out))
                lifecycle.train(self.cfg["base"], own, out=out, callbacks=[cb])
            m = measured(out)
        except (PowertrainError, RuntimeError, ValueError) as e:  # a bad corner of the space: this trial fails
            trial.set_user_attr("error", str(e).splitlines()[0][:300])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            twin.tell(shadow, state=optuna.trial.TrialState.FAIL)
            say(f"trial {trial.number}: failed: {trial.user_attrs.get('error', e)}")
            return
        trial.set_user_attr("measured", m)
        self._constrain(trial, m)
        values = [value_of(m, n, self.cfg["split"]) for n, _ in self.objectives]
        metric = value_of(m, self.metric[0], self.cfg["split"])
        if cb.pruned_at is not None:
            trial.set_user_attr("pruned_at_step", cb.pruned_at)
            trial.set_user_attr("planned_steps", cb.planned_steps)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            twin.tell(shadow, state=optuna.trial.TrialState.PRUNED)
        elif None in values:
            trial.set_user_attr("error", f"no finite value for every objective: {dict(zip([n for n, _ in self.objectives], values))}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            twin.tell(shadow, state=optuna.trial.TrialState.FAIL)
            have = m.get(self.cfg["split"]) or {}
            missing = [n for n, _ in self.objectives if n not in COSTS and n not in have]
            if have and missing:  # a name eval.json never has: every trial would fail the same way
                raise RecipeError(f"--objectives {missing[0]}: not a metric in eval.json's {self.cfg['split']} "
                                  f"(it has {', '.join(sorted(k for k, v in have.items() if isinstance(v, (int, float))))}); "
                                  f"start a new sweep naming one of them")
        else:
            study.tell(trial, values)
            twin.tell(shadow, metric)
        say(trial_line(trial.number, own, m, self.objectives, self.cfg["split"],
                       cb.pruned_at))

    def run_baseline(self, say=print) -> None:
        """The recipe as it is, in SWEEP_DIR/baseline (resumed if a crash cut it short)."""
        from ..train import lifecycle

        out = self.path / "baseline"
        if (out / "eval.json").is_file():
            return
        say("baseline: training the recipe as it is")
        warm_up(self.path)  # billed like the trials: none pays the process's start-up
        if (out / "recipe.yaml").is_file():
            lifecycle.resume(out, callbacks=[])
        else:
            lifecycle.train(self.cfg["base"], [], out=out, callbacks=[])


_warmed: dict = {}


def warm_up(where: Path) -> float:
    """Once per process, before the sweep bills any run: a one-step `xor` run in a hidden folder of `where`
    (the sweep directory), untimed and deleted. A process's first run imports what training imports lazily (torchmetrics on the first
    evaluation: 1-4 s) inside its billed fit window, and the runs after it do not: without this the baseline
    (or trial 0) alone would pay the process's start-up. Returns the seconds it took (0 after the first call)."""
    if _warmed:
        return 0.0
    import shutil
    import time

    from ..train import lifecycle

    t0 = time.perf_counter()
    folder = Path(where) / f".warm-up-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        lifecycle.train("xor", ["train.max_steps=1"], out=folder, callbacks=[])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _warmed["s"] = time.perf_counter() - t0
    return _warmed["s"]


def _suggest(dims: list[Dim], trial) -> list[str]:
    """The trial's own overrides; a sampled float keeps 4 significant digits (lr 0.003162, not 0.0031622776601683794):
    the trial trains with exactly the value its line and command show."""
    from .space import override

    return [override(d.key, _short(d.suggest(trial))) for d in dims]


def _short(v):
    return float(f"{v:.4g}") if isinstance(v, float) else v


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def trial_line(number: int, overrides: list[str], m: dict, objectives, split: str, pruned_at) -> str:
    vals = []
    for n, _ in objectives:
        v = value_of(m, n, split)
        vals.append(f"{n} {'-' if v is None else format(v, '.4g')}" + (f" ({split})" if n not in COSTS else ""))
    test = [f"test {n} {m['test'][n]:.4g}" for n, _ in objectives if n not in COSTS and n in m.get("test", {})]
    tail = f"  [pruned at step {pruned_at}]" if pruned_at is not None else ""
    return f"trial {number}: {' '.join(overrides)} -> {', '.join(vals + test)}{tail}"


def run_sweep(sweep: Sweep, workers: int = 1, say=print) -> dict:
    """Baseline (if asked), then the trials on `workers` processes, then the summary."""
    if sweep.cfg["baseline"]:
        sweep.run_baseline(say)
    if workers <= 1:
        sweep.work(say)
    else:
        cmd = [sys.executable, "-m", "powertrain", "sweep", "--resume", str(sweep.path), "--worker"]
        env = {**os.environ}  # the CPUs shared among the workers (your own OMP_NUM_THREADS wins)
        env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // workers)))
        procs = [subprocess.Popen(cmd, env=env) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise PowertrainError(f"sweep {sweep.path}: worker exit codes {codes}; finished trials are kept: "
                                  f"powertrain sweep --resume {sweep.path}")
    return summarize(sweep)
