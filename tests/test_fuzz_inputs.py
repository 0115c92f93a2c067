"""Issue 21's fuzz test: recipes and CSV files generated from a seeded `random` (types, sizes, nesting,
aliases, keys, encodings; cells, widths, headers, encodings), each given to `powertrain train`. Every one
ends in exit 0 or in exit 2 with one line on stderr; none raises (a traceback) and none hangs (an alarm of
HANG_S per case names the one that would). POWERTRAIN_FUZZ_SEED picks other cases; a failure prints its
seed, case number, mutation and input.
"""
from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

from powertrain import cli

SEED = int(os.environ.get("POWERTRAIN_FUZZ_SEED", "2112"))
N_RECIPES, N_CSV = 60, 36
HANG_S = 60  # a hang detector, not a speed bar: a case that needs more is stuck

BASE = {"name": "fuzz", "description": "a generated recipe",
        "data": {"name": "xor", "val_fraction": 0.1},
        "model": {"name": "mlp", "hidden": [4], "activation": "tanh", "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.5, "optimizer": "sgd", "momentum": 0.5, "log_every": 5,
                  "eval_every_epochs": 1, "warmup_steps": 0, "betas": [0.9, 0.999]},
        "run": {"seed": 0, "region": "world", "pue": 1.0}}
WEIRD = [True, False, None, "", "64", "1e3", "yes", "[1, 2]", -1, 0, 2**31, 2**64, -(2**70), 1.5, -0.0, 1e308,
         float("nan"), float("inf"), [], [1, [2, [3]]], {}, {"a": 1}, "\u00e9\u00e8\u4e2d", "x" * 3000]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"still running after {HANG_S} s")


def _paths(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))
        else:
            yield (*prefix, k)


def _set(d: dict, path, value) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def yaml_text(obj, indent: int = 0) -> str:
    """Block YAML written by hand (so that mutations can reach the text itself): JSON flow values."""
    lines = []
    for k, v in obj.items():
        if isinstance(v, dict) and v:
            lines.append(" " * indent + f"{k}:")
            lines.append(yaml_text(v, indent + 2))
        else:
            text = json.dumps(v) if not (isinstance(v, float) and v != v) else ".nan"
            text = {"Infinity": ".inf", "-Infinity": "-.inf"}.get(text, text)
            lines.append(" " * indent + f"{k}: {text}")
    return "\n".join(lines)


def recipe_case(rng: random.Random) -> tuple[str, bytes]:
    """(what was done, the file's bytes) for one mutation of BASE."""
    r = json.loads(json.dumps(BASE))
    kind = rng.choice(["type", "type", "size", "nesting", "alias", "key", "encoding", "structure", "combo"])
    paths = list(_paths(r))
    if kind in ("type", "combo"):
        for _ in range(1 if kind == "type" else rng.randint(2, 4)):
            p = rng.choice(paths)
            _set(r, p, rng.choice(WEIRD))
        what = "values of other types"
    if kind == "size":
        p = rng.choice([("model", "hidden"), ("train", "batch_size"), ("train", "epochs"), ("train", "log_every"),
                        ("train", "warmup_steps"), ("data", "val_fraction"), ("model", "dropout")])
        v = rng.choice([-16, 0, 1, 3, 10**8, 2**40, -1e9, 0.5, 1e-30, [0], [-3, 4], [10**9], [2] * 40])
        _set(r, p, v)
        what = f"{'.'.join(p)} = {v!r}"
    nested = None
    if kind == "nesting":  # written as text: deeper than any recursion limit
        depth = rng.choice([5, 31, 33, 100, 500, 5000])
        opens = [rng.choice(["[", "{a: "]) for _ in range(depth)]
        nested = "".join(opens) + "4" + "".join("]" if o == "[" else "}" for o in reversed(opens))
        p = rng.choice(paths)
        _set(r, p, "NESTED")
        what = f"{'.'.join(p)} nested {depth} deep"
    text = yaml_text(r)
    if nested is not None:
        text = text.replace('"NESTED"', nested)
    if kind == "alias":  # a list that defines its anchors in order, each level `fan` aliases of the one before
        fan, levels = rng.randint(2, 12), rng.randint(1, 9)
        item = rng.choice(['"lol"', "1", "[8]"])
        anchors = ["&l0 [" + ", ".join([item] * fan) + "]"]
        anchors += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]" for i in range(1, levels)]
        bomb = f"[{', '.join(anchors)}]"
        where = rng.choice(["description", "hidden", "x"])
        if where == "description":
            text = text.replace('description: "a generated recipe"', f"description: {bomb}")
        elif where == "hidden":
            text = text.replace("hidden: [4]", f"hidden: {bomb}")
        else:
            text = f"x: {bomb}\n" + text
        what = f"aliases {fan}^{levels} of {item} under {where}"
    if kind == "key":
        op = rng.choice(["duplicate", "unknown", "empty", "number", "dotted", "case"])
        line = rng.choice([ln for ln in text.splitlines() if ":" in ln and not ln.endswith(":")])
        new = {"duplicate": line, "unknown": line.replace(line.strip().split(":")[0], "lerning_rate", 1),
               "empty": line.split(":")[0].rstrip("abcdefghijklmnopqrstuvwxyz_") + '"": 1',
               "number": line.split(":")[0].rstrip("abcdefghijklmnopqrstuvwxyz_") + "7: 1",
               "dotted": line.split(":")[0] + ".x: 1", "case": line.upper()}[op]
        text = text.replace(line, line + "\n" + new, 1)
        what = f"key mutation: {op}"
    raw = (text + "\n").encode("utf-8")
    if kind == "encoding":
        op = rng.choice(["utf16", "bom", "latin1", "nul", "random", "truncate", "tabs", "crlf"])
        raw = {"utf16": text.encode("utf-16"), "bom": b"\xef\xbb\xbf" + raw,
               "latin1": raw.replace(b"generated", "g\u00e9n\u00e9r\u00e9".encode("latin-1")),
               "nul": raw[:20] + b"\x00" + raw[20:], "random": bytes(rng.randrange(256) for _ in range(300)),
               "truncate": raw[:rng.randrange(1, len(raw))], "tabs": raw.replace(b"  ", b"\t"),
               "crlf": raw.replace(b"\n", b"\r\n")}[op]
        what = f"encoding: {op}"
    if kind == "structure":
        op = rng.choice(["list", "scalar", "empty", "null-section", "no-data", "document-stream"])
        raw = {"list": b"- 1\n- 2\n", "scalar": b"42\n", "empty": b"", "null-section": raw.replace(b"train:", b"train: ~\nx:"),
               "no-data": b"model: {name: mlp}\n", "document-stream": raw + b"---\n" + raw}[op]
        what = f"structure: {op}"
    return what, raw


CSV_HEAD = ["a", "b", "c", "target"]


def csv_case(rng: random.Random) -> tuple[str, bytes]:
    """(what was done, the file's bytes) for one mutation of a small clean table."""
    rows = [[f"{rng.random():.4f}", f"{rng.gauss(0, 10):.3f}", rng.choice(["red", "green", "blue"]), str(i % 2)]
            for i in range(40)]
    head = list(CSV_HEAD)
    op = rng.choice(["cells", "cells", "cells", "width", "header", "target", "encoding", "shape", "quote"])
    what = op
    if op == "cells":
        bad = rng.choice(["nan", "inf", "-inf", "Infinity", "1e308", "-1e400", "3.5e38", "", "NA", "?", "0x1F",
                          "1,5", "true", "2024-01-01", "1e-320", "   ", "\u00e9", "9" * 400])
        for _ in range(rng.randint(1, 30)):
            rows[rng.randrange(len(rows))][rng.randrange(4)] = bad
        what = f"cells {bad!r}"
    if op == "width":
        rows[rng.randrange(len(rows))].append("extra") if rng.random() < 0.5 else rows[rng.randrange(len(rows))].pop()
    if op == "header":
        head = rng.choice([["a", "a", "c", "target"], ["", "b", "c", "target"], ["a", "b", "c", "label"],
                           ["a", "b", "c", "target", "d"], [" a ", "b", "c", " target"]])
        what = f"header {head}"
    if op == "target":
        t = rng.choice(["one class", "all missing", "many classes", "text", "floats"])
        for i, r in enumerate(rows):
            r[3] = {"one class": "1", "all missing": "", "many classes": str(i), "text": rng.choice(["yes", "no"]),
                    "floats": f"{rng.random():.3f}"}[t]
        what = f"target: {t}"
    if op == "shape":
        s = rng.choice(["header only", "empty", "one row", "blank lines", "no target column"])
        if s == "header only":
            rows = []
        elif s == "one row":
            rows = rows[:1]
        elif s == "no target column":
            head, rows = head[:3], [r[:3] for r in rows]
        text = {"empty": ""}.get(s)
        if s == "blank lines":
            rows = [r if i % 3 else ["", "", "", ""] for i, r in enumerate(rows)]
        what = f"shape: {s}"
        if text is not None:
            return what, b""
    body = "\n".join(",".join(r) for r in [head, *rows]) + "\n"
    if op == "quote":
        body = body.replace("red", '"red', 1) if rng.random() < 0.5 else body.replace("green", '"gr\neen"', 1)
        what = "quote: unbalanced or with a newline"
    raw = body.encode("utf-8")
    if op == "encoding":
        e = rng.choice(["utf16", "bom", "latin1", "nul", "random", "semicolons", "crlf"])
        raw = {"utf16": body.encode("utf-16"), "bom": b"\xef\xbb\xbf" + raw,
               "latin1": raw.replace(b"red", "r\u00e9d".encode("latin-1")), "nul": raw.replace(b"green", b"gr\x00een"),
               "random": bytes(rng.randrange(256) for _ in range(500)), "semicolons": raw.replace(b",", b";"),
               "crlf": raw.replace(b"\n", b"\r\n")}[e]
        what = f"encoding: {e}"
    return what, raw


def run_case(capsys, tmp_path: Path, label: str, argv: list[str]) -> tuple[int, str]:
    """The command in this process under the hang alarm; (exit status, stderr)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        code = cli.main(argv)
    except Hang as e:
        pytest.fail(f"{label}: {e}")
    except BaseException as e:  # noqa: BLE001  (a traceback is the failure this test looks for)
        import traceback

        pytest.fail(f"{label}: raised {type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, capsys.readouterr().err


def check(label: str, code: int, err: str, run: Path) -> str:
    assert "Traceback" not in err, f"{label}: {err[-800:]}"
    if code == 2:
        assert err.startswith("powertrain: error: ") and err.count("\n") == 1, f"{label}: not one line: {err[-800:]}"
        assert not (run / "recipe.yaml").exists() or (run / "checkpoints").is_dir(), label
        return "refused"
    assert code == 0, f"{label}: exit status {code}; stderr: {err[-800:]}"
    ev = json.loads((run / "eval.json").read_text(), parse_constant=lambda c: pytest.fail(f"{label}: {c} in eval.json"))
    assert ev["stop_reason"], label
    return "trained"


def test_fuzz_recipes_end_in_a_run_or_one_line(tmp_path, capsys):
    rng = random.Random(SEED)
    seen = {"refused": 0, "trained": 0}
    for i in range(N_RECIPES):
        what, raw = recipe_case(rng)
        path = tmp_path / f"r{i:03d}.yaml"
        path.write_bytes(raw)
        run = tmp_path / f"run{i:03d}"
        label = f"POWERTRAIN_FUZZ_SEED={SEED} recipe case {i} ({what}): {raw[:160]!r}"
        code, err = run_case(capsys, tmp_path, label, ["train", str(path), "train.max_steps=3", "--out", str(run),
                                                       "--quiet"])
        seen[check(label, code, err, run)] += 1
    assert seen["refused"] >= N_RECIPES // 3 and seen["trained"] >= 3, seen  # both outcomes were reached


def test_fuzz_csv_files_end_in_a_run_or_one_line(tmp_path, capsys):
    rng = random.Random(SEED + 1)
    seen = {"refused": 0, "trained": 0}
    for i in range(N_CSV):
        what, raw = csv_case(rng)
        path = tmp_path / f"t{i:03d}.csv"
        path.write_bytes(raw)
        run = tmp_path / f"run{i:03d}"
        label = f"POWERTRAIN_FUZZ_SEED={SEED} csv case {i} ({what}): {raw[:160]!r}"
        code, err = run_case(capsys, tmp_path, label, [
            "train", "csv-mlp", f"data.path={path}", "data.target=target", "data.task=auto", "model.hidden=[4]",
            "train.max_steps=3", "train.batch_size=8", "--out", str(run), "--quiet"])
        seen[check(label, code, err, run)] += 1
    assert seen["refused"] >= 5 and seen["trained"] >= 5, seen
