"""Charts as inline SVG, drawn on the server (no chart library, no script needed to see them).

Each chart is a time axis (session dates) against a bounded value axis (ORS/SRS 0-40, T-score
20-80, PHQ-9 0-27...), with:
- lines: a series of points joined in date order; each point is a focusable element with a
  `<title>` (hover) and an `aria-label` (screen readers) giving its date and value, and a mark
  class (alert, status colour) drawn by shape as well as colour so that print in black and white
  and colour-blind readers lose nothing (WCAG 2.1 1.4.1 Use of Color);
- bands: a shaded range (the reliable-change band intake +/- RCI);
- thresholds: a dashed step line (the clinical cutoff, which changes with the client's age band;
  the SRS alliance threshold), labelled at the right end.

Keyboard: the first point of a chart is in the tab order and the arrow keys move between points
(static/app.js, a roving tabindex, WAI-ARIA Authoring Practices); the chart's readout line says
the focused point. Every chart is followed by its values as a table for those who prefer one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 40, 112, 10, 28


@dataclass(frozen=True)
class Point:
    day: date
    value: float
    label: str  # "3 Aug 2026: ORS 23.4, below the cutoff"
    mark: str = ""  # extra class: "alert", "red", "amber", "green", "grey"


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]
    css: str = "s1"


@dataclass(frozen=True)
class Band:
    low: float
    high: float
    label: str


@dataclass(frozen=True)
class Threshold:
    steps: Sequence[tuple[date, float]]  # value from each date on
    label: str


@dataclass
class Chart:
    key: str  # unique on the page: ids of the title and readout
    title: str
    y_min: float
    y_max: float
    series: list[Series]
    bands: list[Band] = field(default_factory=list)
    thresholds: list[Threshold] = field(default_factory=list)
    y_step: float | None = None


def short_day(day: date) -> str:
    return f"{day.day} {day.strftime('%b')}"


def long_day(day: date) -> str:
    return f"{day.day} {day.strftime('%b %Y')}"


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


class _Scale:
    def __init__(self, chart: Chart, days: list[date]) -> None:
        self.first, self.last = min(days), max(days)
        self.span = max((self.last - self.first).days, 1)
        self.y_min, self.y_max = chart.y_min, chart.y_max

    def x(self, day: date) -> float:
        if self.first == self.last:
            return LEFT + (WIDTH - LEFT - RIGHT) / 2
        return LEFT + (day - self.first).days / self.span * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        clamped = min(max(value, self.y_min), self.y_max)
        return TOP + (self.y_max - clamped) / (self.y_max - self.y_min) * (HEIGHT - TOP - BOTTOM)


def render(chart: Chart) -> Markup:
    days = [p.day for s in chart.series for p in s.points]
    if not days:
        return Markup('<p class="empty">No data yet.</p>')
    scale = _Scale(chart, days)
    title_id, readout_id = f"{chart.key}-title", f"{chart.key}-readout"
    out = [
        f'<figure class="chart" data-chart="{escape(chart.key)}">',
        f'<figcaption id="{title_id}">{escape(chart.title)}</figcaption>',
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="group" aria-labelledby="{title_id}" '
        f'aria-describedby="{readout_id}" class="chart-svg">',
    ]
    out += _axes(chart, scale)
    for band in chart.bands:
        top, bottom = scale.y(band.high), scale.y(band.low)
        out.append(
            f'<rect class="band" x="{LEFT}" y="{top:.1f}" width="{WIDTH - LEFT - RIGHT}" '
            f'height="{bottom - top:.1f}"><title>{escape(band.label)}</title></rect>'
        )
        out.append(
            f'<text class="band-label" x="{WIDTH - RIGHT + 4}" y="{(top + bottom) / 2 + 4:.1f}">'
            f"{escape(_first_word(band.label))}</text>"
        )
    for threshold in chart.thresholds:
        out += _threshold(threshold, scale)
    first = True
    for series in chart.series:
        points = sorted(series.points, key=lambda p: p.day)
        if len(points) > 1:
            path = " ".join(f"{scale.x(p.day):.1f},{scale.y(p.value):.1f}" for p in points)
            out.append(f'<polyline class="line {series.css}" points="{path}"/>')
        for point in points:
            tabindex = "0" if first else "-1"
            first = False
            label = escape(point.label)
            x, y = scale.x(point.day), scale.y(point.value)
            out.append(
                f'<g class="pt {series.css} {escape(point.mark)}" tabindex="{tabindex}" '
                f'role="img" aria-label="{label}"><title>{label}</title>{_marker(point.mark, x, y)}</g>'
            )
    out.append("</svg>")
    out.append(
        f'<p class="readout" id="{readout_id}" aria-live="polite">{escape(_summary(chart))}</p>'
    )
    out.append(_table(chart))
    out.append("</figure>")
    return Markup("".join(out))


def _first_word(label: str) -> str:
    return label.split(":")[0]


def _marker(mark: str, x: float, y: float) -> str:
    """Shape carries the meaning colour carries: an alert is a diamond, a red status a square."""
    if mark in ("alert", "red"):
        if mark == "alert":
            return f'<path d="M{x:.1f},{y - 6:.1f} l6,6 l-6,6 l-6,-6 z"/>'
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5"/>'


def _axes(chart: Chart, scale: _Scale) -> list[str]:
    out = []
    step = chart.y_step or (chart.y_max - chart.y_min) / 4
    value = chart.y_min
    while value <= chart.y_max + 1e-9:
        y = scale.y(value)
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        out.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(value)}</text>'
        )
        value += step
    days = sorted({p.day for s in chart.series for p in s.points})
    shown = days if len(days) <= 6 else [days[round(i * (len(days) - 1) / 5)] for i in range(6)]
    for day in dict.fromkeys(shown):
        out.append(
            f'<text class="tick" x="{scale.x(day):.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
            f"{escape(short_day(day))}</text>"
        )
    return out


def _threshold(threshold: Threshold, scale: _Scale) -> list[str]:
    steps = sorted(threshold.steps)
    if not steps:
        return []
    coords: list[str] = []
    for index, (day, value) in enumerate(steps):
        start = LEFT if index == 0 else scale.x(day)
        end = WIDTH - RIGHT if index + 1 == len(steps) else scale.x(steps[index + 1][0])
        y = scale.y(value)
        coords += [f"{start:.1f},{y:.1f}", f"{end:.1f},{y:.1f}"]
    label = escape(threshold.label)
    last_y = scale.y(steps[-1][1])
    return [
        f'<polyline class="threshold" points="{" ".join(coords)}"><title>{label}</title></polyline>',
        f'<text class="threshold-label" x="{WIDTH - RIGHT + 4}" y="{last_y + 4:.1f}">'
        f"{escape(_first_word(threshold.label))} {_num(steps[-1][1])}</text>",
    ]


def _summary(chart: Chart) -> str:
    points = sorted((p for s in chart.series for p in s.points), key=lambda p: p.day)
    if not points:
        return ""
    return f"{len(points)} points; latest: {points[-1].label}"


def _table(chart: Chart) -> str:
    rows = "".join(
        f"<tr><td>{escape(s.name)}</td><td>{escape(long_day(p.day))}</td>"
        f"<td>{escape(_num(p.value))}</td><td>{escape(p.label)}</td></tr>"
        for s in chart.series
        for p in sorted(s.points, key=lambda p: p.day)
    )
    return (
        f'<details class="values"><summary>Values of {escape(chart.title)}</summary>'
        '<table><thead><tr><th scope="col">Series</th><th scope="col">Date</th>'
        f'<th scope="col">Value</th><th scope="col">Detail</th></tr></thead><tbody>{rows}</tbody>'
        "</table></details>"
    )
