"""The report page's section for a sweep directory: the chosen trial and its command, the front, the
trials; the sweep's finished runs then follow as ordinary runs."""
from __future__ import annotations

import base64
from pathlib import Path

from ..study.summary import COSTS, _f, summarize, value_of
from ..study.sweep import Sweep
from ..study.plan import human_energy
from .markup import esc, section, table


def sweep_runs(path) -> list[Path]:
    """The run directories of a sweep that finished: the baseline, then the trials in order."""
    path = Path(path)
    runs = [path / "baseline"] if (path / "baseline" / "eval.json").is_file() else []
    return runs + sorted(d for d in (path / "trials").glob("trial-*") if (d / "eval.json").is_file())


def sweep_html(path) -> str:
    """The report page's section for a sweep: the chosen trial and its command, the front, the trials."""
    s = summarize(Sweep(path), png=True)
    split, objs = s["split"], s["objectives"]
    metric = next(n for n, _ in objs if n not in COSTS)
    c = s.get("chosen")
    head = f"<p>no finished trial reached {esc(' '.join(map(str, s['target'])))} on {split}</p>" if s["target"] else ""
    if c:
        head = (f"<p>chosen: trial {c['number']} (lowest {esc(c['by'])} among the trials that reach "
                f"{esc(' '.join(map(str, s['target'])))} on {split}): test {esc(metric)} "
                f"{_f(c['measured']['test'].get(metric))}, {esc(human_energy(c['measured']['energy_j']))}</p>"
                f"<pre>{esc(c['command'])}</pre>")
    png = Path(s["picture"]).read_bytes() if s.get("picture") else None
    img = (f'<img alt="sweep front" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else "")
    rows = [[f"{r['number']}{' *' if r['number'] in s['front'] else ''}", r["state"].lower(),
             _f(value_of(r["measured"] or {}, metric, split)), _f(((r["measured"] or {}).get("test") or {}).get(metric)),
             human_energy(r["measured"]["energy_j"]) if r["measured"] and r["measured"].get("energy_j") else "-",
             " ".join(r["overrides"])] for r in s["trials"]]
    t = table(["trial (* front)", "state", f"{split} {metric}", f"test {metric}", "energy", "settings"],
              [[esc(x) for x in row] for row in rows])
    e = s["energy"]
    note = (f"<p class='note'>pruning stopped {e['pruned']} trials and saved {esc(human_energy(e['saved_by_pruning_j']))} "
            f"({esc(e['saved_note'])}); the trials below are numbered in the compare table after the baseline.</p>")
    return section("sweep", f"sweep {esc(Path(path).name)}", head + img + t + note)
