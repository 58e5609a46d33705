"""The per-layer sensitivity chart of the HTML report: own-output SQNR per quantized layer as inline SVG."""

from __future__ import annotations

import html
import math

from .view import GateView


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _nice_step(span: float) -> float:
    raw = span / 5 if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def sensitivity_svg(view: GateView, *, width: int = 960, height: int = 280) -> str | None:
    """Per-layer SQNR (dB) as an inline SVG bar chart in topological order, offenders in red; None if no data.

    Layers whose SQNR is not finite (bit-exact: infinite) are drawn to the top of the axis and labelled;
    every bar has a ``<title>`` tooltip with its layer, op and value.
    """
    points = view.bisection.sensitivity if view.bisection is not None else ()
    if not points:
        return None
    finite = [p.sqnr_db for p in points if math.isfinite(p.sqnr_db)]
    low = min([0.0, *finite])
    high = max([1.0, *finite])
    step = _nice_step(high - low)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if high - low < step:
        high = low + step
    left, right, top, bottom = 56, 12, 24, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / len(points)
    bar_w = max(1.0, min(28.0, slot * 0.75))

    def y_of(value: float) -> float:
        return top + plot_h * (high - value) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Per-layer SQNR in dB, topological order">',
        f'<text x="{left}" y="14">own-output SQNR per quantized layer (dB, higher is better); '
        f'<tspan fill="#cf222e">red: offending layer</tspan></text>',
    ]
    tick = low
    while tick <= high + step / 2:
        y = y_of(tick)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d1d9e0"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(f"{tick:g}")}</text>'
        )
        tick += step
    zero = y_of(0.0)
    label_every = max(1, math.ceil(len(points) / 40))
    for position, point in enumerate(points):
        value, bad = point.sqnr_db, point.offender
        x = left + position * slot + (slot - bar_w) / 2
        shown = high if not math.isfinite(value) and value != -math.inf else max(low, value)
        y_top, y_bottom = sorted((y_of(shown), zero))
        color = "#cf222e" if bad else ("#8c959f" if not math.isfinite(value) else "#0969da")
        title = (
            f"{point.index}: {point.name} ({point.op}) {point.text} dB" if point.index >= 0 else point.name
        )
        if bad:  # a band over the whole height: an offender's bar may be too short to see
            parts.append(
                f'<rect x="{left + position * slot:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}" '
                f'fill="#ffebe9"><title>{esc(title)}</title></rect>'
                f'<text x="{x + bar_w / 2:.1f}" y="{min(y_top, zero) - 4:.1f}" text-anchor="middle" '
                f'fill="#cf222e" font-weight="bold">{esc(point.text)}</text>'
            )
        parts.append(
            f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" '
            f'height="{max(y_bottom - y_top, 2.0 if bad else 0.5):.1f}" '
            f'fill="{color}"><title>{esc(title)}</title></rect>'
        )
        if not math.isfinite(value):
            mark = "∞" if value == math.inf else esc(point.text)
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{y_top - 3:.1f}" text-anchor="middle">{mark}</text>'
            )
        if bad or position % label_every == 0:
            label = str(point.index) if point.index >= 0 else str(position)
            weight = ' font-weight="bold" fill="#cf222e"' if bad else ""
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle"{weight}>'
                f"{esc(label)}</text>"
            )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#59636e"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 24}" text-anchor="middle">layer index '
        "(topological order; hover a bar for its name)</text>"
    )
    named = [p for p in points if p.offender]
    if named:
        text = ", ".join(f"{p.index}: {p.name}" for p in named)
        parts.append(f'<text x="{left}" y="{height - 6}" fill="#cf222e">offenders {esc(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)
