"""Acceptance test of the promise "no crash or signal loses work or silently changes a result".

One uninterrupted run of digits-mlp (dropout, early stopping, evaluations every 9 steps, checkpoints every
6: see crashkit.OVERRIDES) is the reference. Then, at moments drawn by a seeded RNG (printed in every
failure; POWERTRAIN_CRASH_SEED picks other ones), a fresh run of the same recipe is
  - SIGKILLed right after optimizer step k, or inside a checkpoint write (the n-th os.fsync/os.replace/
    os.rename during fit, before or after the real call), or
  - sent SIGINT / SIGTERM in the middle of step k (after the model's forward, before backward), through
    the CLI (exit status 130 / 143) or the Python API (KeyboardInterrupt / a subclass of it for SIGTERM):
    it must finish step k, leave checkpoints/step-k as the newest, and print `resume with: powertrain
    resume DIR` on stderr,
then resumed, and must equal the reference: every tensor of the newest checkpoint's model.safetensors
and of checkpoints/best.safetensors bit-equal, eval.json equal, and metrics.jsonl the same lines (measured
values aside: samples_per_s, and all but step/epoch/window on window lines).

Every child is forked from a forkserver that preloaded torch and powertrain (crashkit.py) and runs with
one torch thread; two cases run at a time (POWERTRAIN_CRASH_JOBS).
"""
from __future__ import annotations

import difflib
import json
import multiprocessing
import os
import random
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import crashkit

SEED = int(os.environ.get("POWERTRAIN_CRASH_SEED", "20261127"))
JOBS = int(os.environ.get("POWERTRAIN_CRASH_JOBS", "2"))
N_AFTER_STEP, N_IN_WRITE, N_PER_SIGNAL = 13, 7, 5  # 20 SIGKILL moments; 5 SIGINT and 5 SIGTERM
CHILD_TIMEOUT_S = 30  # one train or resume takes about a second: more means it hangs
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}

_ctx = None


def ctx():
    global _ctx
    if _ctx is None:
        _ctx = multiprocessing.get_context("forkserver")
        _ctx.set_forkserver_preload(crashkit.PRELOAD)
    return _ctx


# ------------------------------------------------------------------ children
def run_child(folder: Path, name: str, mode: str, run_dir: Path, entry: str = "api", moment=None,
              overrides=None, fresh_cache: Path | None = None) -> dict:
    """Train or resume in a forked child; returns {"exitcode", "outcome" (None if it died), "log", "hung"}.
    `fresh_cache`: the child's powertrain cache folder (empty: a new machine), its peak cached whatever the load."""
    job = {"mode": mode, "entry": entry, "run_dir": str(run_dir), "moment": moment,
           "overrides": list(crashkit.OVERRIDES if overrides is None else overrides),
           "outcome": str(folder / f"{name}.json"), "log": str(folder / f"{name}.log")}
    if fresh_cache is not None:
        job.update(env={"POWERTRAIN_CACHE_DIR": str(fresh_cache)}, idle_cpu=True)
    p = ctx().Process(target=crashkit.child, args=(job,), daemon=True)
    p.start()
    p.join(CHILD_TIMEOUT_S)
    hung = p.is_alive()
    if hung:
        p.kill()
        p.join(10)
    out = Path(job["outcome"])
    log = Path(job["log"])
    return {"exitcode": p.exitcode, "hung": hung, "outcome": json.loads(out.read_text()) if out.exists() else None,
            "log": log.read_text(errors="replace") if log.exists() else ""}


def child_failed(res: dict, what: str) -> list[str]:
    """Problems of a child that should have finished normally."""
    if res["hung"]:
        return [f"{what}: hung (still running after {CHILD_TIMEOUT_S} s; killed)"]
    o = res["outcome"]
    if o is None:
        return [f"{what}: died with exit code {res['exitcode']}; log tail: {res['log'][-600:]!r}"]
    if o["exception"]:
        return [f"{what}: raised {o['exception']['mro'][0]}: {o['exception']['traceback'][-800:]}"]
    if o["rc"] not in (None, 0):
        return [f"{what}: exit status {o['rc']}; log tail: {res['log'][-600:]!r}"]
    return []


# ------------------------------------------------------------------ comparison with the reference
def newest_checkpoint(run: Path):
    found = sorted(p for p in (run / "checkpoints").glob("step-*") if p.is_dir())
    return found[-1] if found else None


def tensor_differences(label: str, a: Path, b: Path) -> list[str]:
    if not b.is_file():
        return [f"{label}: missing in the resumed run"]
    try:
        wa, wb = load_file(str(a)), load_file(str(b))
    except Exception as e:  # noqa: BLE001
        return [f"{label}: unreadable ({type(e).__name__}: {e})"]
    if wa.keys() != wb.keys():
        return [f"{label}: other tensor names ({sorted(wa.keys() ^ wb.keys())[:4]})"]
    bad = [k for k in wa if not torch.equal(wa[k], wb[k])]
    if not bad:
        return []
    k = bad[0]
    gap = ((wa[k].double() - wb[k].double()).abs().max().item() if wa[k].shape == wb[k].shape
           else f"shapes {tuple(wa[k].shape)} vs {tuple(wb[k].shape)}")
    return [f"{label}: {len(bad)} of {len(wa)} tensors differ (e.g. {k}, max |diff| {gap})"]


def _short(line: str, n: int = 110) -> str:
    return line if len(line) <= n else line[:n] + "..."


def _show(line: str) -> str:
    """A metrics line for a failure message: without the confusion matrix, cut short."""
    r = json.loads(line)
    if isinstance(r.get("val"), dict):
        r["val"] = {k: v for k, v in r["val"].items() if k != "confusion_matrix"}
    return _short(json.dumps(r, sort_keys=True), 150)


def json_differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in the {'reference' if k in a else 'resumed run'}"
               for k in sorted(a.keys() ^ b.keys())]
        for k in sorted(a.keys() & b.keys()):
            out += json_differences(a[k], b[k], f"{path}.{k}")
        return out
    return [] if a == b else [f"{path or '.'}: {_short(repr(a), 40)} in the reference, {_short(repr(b), 40)} resumed"]


def metric_lines(run: Path):
    """metrics.jsonl without measured values; a str if unreadable."""
    f = run / "metrics.jsonl"
    if not f.is_file():
        return "missing"
    lines = []
    for i, text in enumerate(f.read_text().splitlines(), 1):
        try:
            r = json.loads(text)
        except json.JSONDecodeError:
            return f"line {i} is not JSON: {text[:120]!r}"
        if "window" in r:
            r = {k: r[k] for k in ("step", "epoch", "window") if k in r}
        else:
            r.pop("samples_per_s", None)
        lines.append(json.dumps(r, sort_keys=True))
    return lines


def metrics_differences(ref: Path, run: Path) -> list[str]:
    a, b = metric_lines(ref), metric_lines(run)
    if isinstance(b, str):
        return [f"metrics.jsonl: {b}"]
    if a == b:
        return []
    out = [f"metrics.jsonl: {len(a)} lines in the reference, {len(b)} resumed"]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if len(out) > 4:
            out.append("  ...")
            break
        if tag in ("delete", "replace"):
            out.append(f"  missing (reference lines {i1 + 1}-{i2}): " + " | ".join(map(_show, a[i1:min(i2, i1 + 2)])))
        if tag in ("insert", "replace"):
            out.append(f"  extra (resumed lines {j1 + 1}-{j2}): " + " | ".join(map(_show, b[j1:min(j2, j1 + 2)])))
    return ["\n".join(out)]


def differences(ref: Path, run: Path) -> list[str]:
    """Everything in which `run` differs from the reference run `ref` (empty: the same result)."""
    out = []
    rn, ln = newest_checkpoint(ref), newest_checkpoint(run)
    if ln is None:
        out.append("no checkpoint in the resumed run")
    else:
        if ln.name != rn.name:
            out.append(f"newest checkpoint {ln.name}, reference {rn.name}")
        out += tensor_differences(f"{ln.name}/model.safetensors", rn / "model.safetensors", ln / "model.safetensors")
    best = ref / "checkpoints" / "best.safetensors"
    if best.is_file():
        out += tensor_differences("best.safetensors", best, run / "checkpoints" / "best.safetensors")
    if not (run / "eval.json").is_file():
        out.append("eval.json: missing")
    else:
        d = json_differences(json.loads((ref / "eval.json").read_text()), json.loads((run / "eval.json").read_text()))
        if d:
            out.append("eval.json: " + "; ".join(d[:4]) + ("; ..." if len(d) > 4 else ""))
    return out + metrics_differences(ref, run)


# ------------------------------------------------------------------ the reference and the moments
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash-ref")
    run = folder / "run"
    res = run_child(folder, "train", "train", run)
    assert not child_failed(res, "reference run"), child_failed(res, "reference run")
    o = res["outcome"]
    ev = json.loads((run / "eval.json").read_text())
    spe, epochs = o["steps_per_epoch"], o["total_steps"] // o["steps_per_epoch"]
    assert str(ev["stop_reason"]).startswith("early stop"), ev["stop_reason"]
    assert ev["step"] <= (epochs - 1) * spe, f"early stopping should end the run before its last epoch: {ev['step']}"
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert o["io_log"], "no os.fsync/os.replace/os.rename during fit: the checkpoint writer changed?"
    return {"dir": run, "step": ev["step"], "io_log": o["io_log"], "spe": spe}


def draw_moments(ref: dict) -> tuple[list[dict], list[dict]]:
    """(20 SIGKILL moments, 10 SIGINT/SIGTERM moments) from the seeded RNG, stratified so that every draw
    covers the places where resume goes wrong: right after a checkpoint (some at an epoch end), in an
    fsync and in the rename/replace that publishes a checkpoint, a signal in a step that evaluates or saves
    and just after an epoch end."""
    rng = random.Random(SEED)
    last, io = ref["step"], ref["io_log"]
    saves = sorted({step for _, step in io})  # steps that wrote a checkpoint (and best.safetensors)
    after_save = rng.sample([s + 1 for s in saves if s < last], N_AFTER_STEP // 2)
    anywhere = rng.sample([k for k in range(1, last + 1) if k not in after_save], N_AFTER_STEP - len(after_save))
    kills = [{"kind": "step", "k": k} for k in sorted(after_save + anywhere)]
    fsyncs = [n for n, (fn, _) in enumerate(io, 1) if fn == "fsync"]
    renames = [n for n, (fn, _) in enumerate(io, 1) if fn != "fsync"]
    picks = rng.sample(fsyncs, N_IN_WRITE - N_IN_WRITE // 2) + rng.sample(renames, min(N_IN_WRITE // 2, len(renames)))
    kills += [{"kind": "io", "n": n, "when": rng.choice(["before", "after"])} for n in sorted(picks)]
    # steps after an epoch end (one that saved, one that did not), before the next save: the epoch's
    # window line may still be unwritten there
    after = {True: [], False: []}
    for e in range(ref["spe"], last, ref["spe"]):
        after[e in saves] += range(e + 1, min([s for s in saves if s > e] + [last]))
    sigs = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        ks = rng.sample([s for s in saves if s < last], 2)
        ks += [rng.choice(group) for group in after.values() if group]
        ks += rng.sample([k for k in range(1, last) if k not in ks], N_PER_SIGNAL - len(set(ks)))
        for i, k in enumerate(sorted(set(ks))):
            sigs.append({"kind": "signal", "sig": int(sig), "k": k, "entry": "cli" if i % 2 == 0 else "api"})
    return kills, sigs


def describe(m: dict, ref: dict) -> str:
    saves = {step for _, step in ref["io_log"]}
    if m["kind"] == "step":
        return f"SIGKILL after step {m['k']}" + (" (saved at the step before)" if m["k"] - 1 in saves else "")
    if m["kind"] == "io":
        fn, step = ref["io_log"][m["n"] - 1]
        return f"SIGKILL {m['when']} os.{fn} #{m['n']} of fit (a write at step {step})"
    if m["kind"] == "signal":
        return (f"{signal.Signals(m['sig']).name} mid-step {m['k']}" + (" (a saving step)" if m["k"] in saves else "")
                + f" ({m['entry']})")
    return "no kill"


# ------------------------------------------------------------------ one case
def signal_problems(m: dict, res: dict, run: Path) -> list[str]:
    """The interrupted child's own behaviour: exit status or exception, resume line, checkpoint step."""
    sig, name = m["sig"], signal.Signals(m["sig"]).name
    if res["hung"]:
        return [f"hung after {name} (killed after {CHILD_TIMEOUT_S} s)"]
    o, out = res["outcome"], []
    if o is None:
        out.append(f"died of the signal without handling it (exit code {res['exitcode']})")
    elif o["signal_step"] is None:
        return ["harness: the signal was never sent (the run ended first?)"]
    elif m["entry"] == "cli":
        if o["exception"]:
            out.append(f"cli main raised {o['exception']['mro'][0]} instead of returning {EXIT_STATUS[sig]}")
        elif o["rc"] != EXIT_STATUS[sig]:
            out.append(f"exit status {o['rc']}, expected {EXIT_STATUS[sig]}")
    else:
        exc = o["exception"]
        if exc is None:
            out.append("powertrain.train returned normally; expected KeyboardInterrupt")
        elif "KeyboardInterrupt" not in exc["mro"]:
            out.append(f"raised {exc['mro'][0]}, not a KeyboardInterrupt: {exc['traceback'][-500:]}")
        elif sig == signal.SIGTERM and exc["mro"][0] == "KeyboardInterrupt":
            out.append("SIGTERM raised a plain KeyboardInterrupt; expected a subclass of it")
    if f"resume with: powertrain resume {run}" not in res["log"]:
        out.append(f"no 'resume with: powertrain resume {run}' on stderr; log tail: {res['log'][-300:]!r}")
    step = (o or {}).get("signal_step") or m["k"]
    newest = newest_checkpoint(run)
    if newest is None or newest.name != f"step-{step:08d}":
        out.append(f"newest checkpoint {newest.name if newest else None}, expected step-{step:08d} (the step "
                   f"during which the signal arrived)")
    return out


def run_case(ref: dict, folder: Path, m: dict, fresh_cache: Path | None = None) -> list[str]:
    folder.mkdir(parents=True)
    run = folder / "run"
    entry = m.get("entry", "api")
    res = run_child(folder, "train", "train", run, entry=entry, moment=m if m["kind"] != "none" else None,
                    fresh_cache=fresh_cache)
    if m["kind"] == "signal":
        problems = signal_problems(m, res, run)
    elif m["kind"] == "none":
        problems = child_failed(res, "train")
        if res["outcome"] and res["outcome"]["io_log"] != ref["io_log"]:
            problems.append("harness: this run's os.fsync/replace/rename calls differ from the reference's")
    elif res["hung"]:
        problems = [f"train hung (killed after {CHILD_TIMEOUT_S} s)"]
    elif res["exitcode"] != -signal.SIGKILL:
        problems = [f"harness: the kill moment was never reached (exit code {res['exitcode']})"]
    else:
        problems = []
    if not (run / "recipe.yaml").is_file():
        return problems + ["no run directory to resume"]
    done = run_child(folder, "resume", "resume", run, entry=entry)
    failed = child_failed(done, f"resume ({entry})")
    return problems + (failed or differences(ref["dir"], run))


def run_cases(ref: dict, root: Path, moments: list[dict]) -> list[tuple[str, list[str]]]:
    """[(description, problems)] of every moment, JOBS cases at a time."""
    def one(i_m):
        i, m = i_m
        return f"[{i:02d}] {describe(m, ref)}", run_case(ref, root / f"case-{i:02d}", m)

    with ThreadPoolExecutor(JOBS) as pool:
        return list(pool.map(one, enumerate(moments)))


def report(results, ref: dict, what: str) -> str:
    failed = [(d, p) for d, p in results if p]
    head = (f"{len(failed)} of {len(results)} {what} lost work or changed the result "
            f"(POWERTRAIN_CRASH_SEED={SEED}; reference: {ref['step']} steps, {ref['spe']} per epoch, "
            f"{len(ref['io_log'])} fsync/replace/rename calls during fit):")
    lines = [head]
    for d, problems in failed:
        lines.append(f"{d}:")
        lines += ["    " + p.replace("\n", "\n    ") for p in problems]
    lines.append("all moments: " + ", ".join(d for d, _ in results))
    return "\n".join(lines)


# ------------------------------------------------------------------ the tests
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(reference, tmp_path):
    kills, _ = draw_moments(reference)
    assert sum(m["kind"] == "io" for m in kills) >= 5 and len(kills) == 20
    results = run_cases(reference, tmp_path, kills)
    assert all(not p for _, p in results), report(results, reference, "SIGKILL moments")


def test_sigint_sigterm_mid_step_save_at_the_step_boundary_then_resume_equals_uninterrupted(reference, tmp_path):
    _, sigs = draw_moments(reference)
    results = run_cases(reference, tmp_path, sigs)
    assert all(not p for _, p in results), report(results, reference, "SIGINT/SIGTERM moments")


def test_harness_a_run_without_kill_then_resume_equals_the_reference(reference, tmp_path):
    problems = run_case(reference, tmp_path / "case", {"kind": "none"})
    assert not problems, problems


def test_harness_on_a_fresh_machine_a_first_run_that_writes_the_peak_cache_equals_the_reference(reference, tmp_path):
    """A first run on a new machine measures the CPU's peak and writes powertrain's cache while it bills (the
    reference, in the suite's cache, read it): the harness counts the run directory's writes only."""
    cache = tmp_path / "fresh-cache"
    problems = run_case(reference, tmp_path / "case", {"kind": "none"}, fresh_cache=cache)
    assert not problems, problems
    assert (cache / "peak.json").is_file(), "the child never wrote its fresh cache: the case tested nothing"


def test_harness_tells_another_seed_apart(reference, tmp_path):
    run = tmp_path / "run"
    res = run_child(tmp_path, "train", "train", run, overrides=[*crashkit.OVERRIDES, "run.seed=1"])
    assert not child_failed(res, "train"), child_failed(res, "train")
    found = differences(reference["dir"], run)
    for part in ("model.safetensors", "best.safetensors", "eval.json", "metrics.jsonl"):
        assert any(part in d for d in found), (part, found)
    shutil.rmtree(run)
