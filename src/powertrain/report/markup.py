"""HTML pieces of the report page: escaped text, numbers for people, tables, sections, inline figures."""
from __future__ import annotations

import base64
import html
import io

from ..measure.bill import _si


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "powertrain", "font.size": 9})
    return plt


def _img(fig, alt: str, tight: bool = True) -> str:
    """A figure as an inline SVG image (a data URI: its own document, so ids never collide). `tight`
    crops to what was drawn (one more layout pass: figures with a fixed layout skip it)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight" if tight else None)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="fig" alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def esc(x) -> str:
    return html.escape(str(x))


def num(x, unit: str = "") -> str:
    """A number for a person: 50,826 / 1.21 GFLOP / 0.409 J / 5.46e-05 g; '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return esc(x)
    if isinstance(x, int) and not unit:
        return f"{x:,}"
    if unit.strip() in ("FLOP", "B", "FLOP/s") or abs(x) >= 1e4:
        return esc(_si(x, unit.strip()))
    text = f"{x:.3g}"
    return f"{text}{' ' if unit.strip() else ''}{unit.strip()}"


def table(head: list[str], rows: list[list], cls: str = "") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    thead = f"<thead><tr>{th}</tr></thead>" if any(head) else ""  # a key-value table has no header
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def section(sid: str, title: str, body: str, cls: str = "") -> str:
    return f'<section id="{esc(sid)}" class="{cls}"><h2>{esc(title)}</h2>\n{body}\n</section>\n'
