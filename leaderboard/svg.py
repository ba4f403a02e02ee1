"""Small SVG figures for the site: a loss curve, bars with error bars, an error heat map.

Written by hand rather than with matplotlib: a site of 10,000 eval runs has thousands of
entry pages, and matplotlib takes ~50 ms a figure (minutes in all, against the 10-second
budget for a build); these are strings, a fraction of a millisecond each. Every text that
comes from a tag is XML-escaped.
"""
from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
            f'<title>{escape(title)}</title><rect width="100%" height="100%" fill="#fff"/>' + "".join(body) + "</svg>")


def loss_curves(curves: dict[str, list[float]], title: str, width: int = 560, height: int = 260) -> str:
    """One polyline per seed (label -> losses by step)."""
    pad_l, pad_r, pad_t, pad_b = 52, 12, 24, 30
    values = [v for c in curves.values() for v in c if math.isfinite(v)]
    steps = max((len(c) for c in curves.values()), default=1)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(i: int, v: float) -> str:
        return f"{pad_l + w * i / max(steps - 1, 1):.1f},{pad_t + h * (1 - (v - lo) / (hi - lo)):.1f}"

    body = [f'<text x="{pad_l}" y="15" font-weight="bold">{escape(title)}</text>',
            f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>',
            f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>',
            f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end">{hi:.3g}</text>',
            f'<text x="{pad_l - 4}" y="{pad_t + h}" text-anchor="end">{lo:.3g}</text>',
            f'<text x="{pad_l + w}" y="{height - 8}" text-anchor="end">step {steps}</text>']
    for k, (label, c) in enumerate(sorted(curves.items())):
        color = PALETTE[k % len(PALETTE)]
        pts = " ".join(xy(i, v) for i, v in enumerate(c) if math.isfinite(v))
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{pts}"/>')
        body.append(f'<text x="{pad_l + 8 + 70 * k}" y="{height - 8}" fill="{color}">{escape(label)}</text>')
    return _svg(width, height, body, title)


def bars(rows: list[tuple[str, float, float | None]], title: str, unit: str, higher_is_better: bool,
         width: int = 560) -> str:
    """Horizontal bars (label, mean, std or None), best first, with error bars of one std."""
    rows = sorted(rows, key=lambda r: -r[1] if higher_is_better else r[1])
    pad_l, bar_h, pad_t = 170, 18, 26
    height = pad_t + bar_h * len(rows) + 24
    top = max([m + (s or 0) for _, m, s in rows] + [1e-9])
    scale = (width - pad_l - 60) / top
    body = [f'<text x="8" y="16" font-weight="bold">{escape(title)} ({escape(unit)}, '
            f'{"higher" if higher_is_better else "lower"} is better)</text>']
    for i, (label, mean, std) in enumerate(rows):
        y = pad_t + i * bar_h
        body.append(f'<text x="{pad_l - 6}" y="{y + 12}" text-anchor="end">{escape(label)}</text>')
        body.append(f'<rect x="{pad_l}" y="{y + 2}" width="{max(mean, 0) * scale:.1f}" height="{bar_h - 5}" fill="#6a9fd4"/>')
        if std:
            x0, x1 = (mean - std) * scale + pad_l, (mean + std) * scale + pad_l
            body.append(f'<line x1="{x0:.1f}" y1="{y + 8}" x2="{x1:.1f}" y2="{y + 8}" stroke="#222"/>')
        body.append(f'<text x="{pad_l + max(mean + (std or 0), 0) * scale + 4:.1f}" y="{y + 12}">{mean:.1f}</text>')
    return _svg(width, height, body, title)


def heat_map(errors: dict[str, list[float]], title: str, columns: list[str] | None = None) -> str:
    """Values (0-100, e.g. error % by corruption and severity) by row and column, darker = higher."""
    names = list(errors)
    cell_w, cell_h, pad_l, pad_t = 52, 18, 130, 40
    cols = max((len(v) for v in errors.values()), default=5)
    columns = columns or [str(j + 1) for j in range(cols)]
    width, height = pad_l + cell_w * cols + 10, pad_t + cell_h * len(names) + 10
    head = title
    body = [f'<text x="8" y="16" font-weight="bold">{escape(head)}</text>']
    for j in range(cols):
        body.append(f'<text x="{pad_l + cell_w * j + cell_w / 2}" y="{pad_t - 6}" text-anchor="middle">'
                    f'{escape(columns[j])}</text>')
    for i, name in enumerate(names):
        y = pad_t + i * cell_h
        body.append(f'<text x="{pad_l - 6}" y="{y + 13}" text-anchor="end">{escape(name)}</text>')
        for j, v in enumerate(errors[name]):
            if not math.isfinite(v):
                continue
            shade = int(255 - 2.2 * max(0.0, min(100.0, v)))
            ink = "#fff" if shade < 120 else "#000"
            body.append(f'<rect x="{pad_l + cell_w * j}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" '
                        f'fill="rgb({shade},{shade},{min(255, shade + 40)})"/>')
            body.append(f'<text x="{pad_l + cell_w * j + cell_w / 2}" y="{y + 13}" text-anchor="middle" '
                        f'fill="{ink}">{v:.0f}</text>')
    return _svg(width, height, body, head)
