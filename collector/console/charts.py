"""Small server-rendered SVG bar charts for the vehicle condition report. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["bar_chart"]

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 860, 180, 48, 34, 14


def _nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * magnitude >= value:
            return step * magnitude
    return value


def bar_chart(labels: Sequence[str], values: Sequence[float | None], *, unit: str, css_class: str) -> str:
    """One bar per label (``None`` = no data, drawn as a gap), a y axis with its top value."""
    if not labels:
        return ""
    top = _nice_top(max((v for v in values if v is not None), default=0.0))
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / len(labels)
    parts = [
        f'<svg class="chart {escape(css_class)}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(unit)}">',
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}"/>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top:g}</text>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
        f'<text class="unit" x="{LEFT}" y="{TOP - 2}">{escape(unit)}</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = LEFT + i * slot + slot * 0.15
        if value is not None:
            h = plot_h * value / top
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                f'data-value="{value:g}"><title>{escape(label)}: {value:g} {escape(unit)}</title></rect>'
            )
        if len(labels) <= 12 or i % max(1, len(labels) // 10) == 0:
            parts.append(f'<text class="tick" x="{x + slot * 0.35:.1f}" y="{HEIGHT - 14}" '
                         f'text-anchor="middle">{escape(label[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)
