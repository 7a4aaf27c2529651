"""A chart (model.py) as SVG.

Two forms of the same drawing:

- for the clinician app (`standalone=False`): classes only, styled by the app's stylesheet (screen
  colours, black and white in print), each point a focusable element with a `<title>` (hover) and
  an `aria-label` (screen readers) giving its date and value; the app's script moves between
  points with the arrow keys (a roving tabindex: the first point is in the tab order);
- standalone (`standalone=True`): the same elements with their colours, strokes and fonts as SVG
  presentation attributes, for renderers without the stylesheet (svglib, for the PDF). The palette
  is the app's screen palette (static/app.css).

Shape carries what colour carries: an alert is a diamond, a red status a square, anything else a
circle. Numbers are written with one decimal of a pixel, so the same chart gives the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from html import escape

from fhirgoal.charts.model import Chart, Threshold, number, short_day

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 40, 112, 10, 28

ACCENT, GREEN, AMBER, RED, GREY, MUTED = (
    "#0b5cad", "#1d7a3a", "#8a5a00", "#b3261e", "#59606b", "#4f5660",
)  # fmt: skip
SERIES_COLOURS = {"s-ors": ACCENT, "s-srs": "#5b3fa0", "s-gas": "#00616b", "s-cmp": GREY}
MARK_COLOURS = {"green": GREEN, "amber": AMBER, "red": RED, "alert": RED}
_TEXT = f'font-family="Helvetica" font-size="12" fill="{MUTED}"'


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


def svg(chart: Chart, *, title_id: str = "", readout_id: str = "", standalone: bool = False) -> str:
    """The chart's `<svg>` element; empty when the chart has no point. `title_id`/`readout_id`:
    the ids of the caption and readout that label it (the app's HTML around it)."""
    days = [p.day for s in chart.series for p in s.points]
    if not days:
        return ""
    scale = _Scale(chart, days)
    look = _Look(standalone)
    if standalone:
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}">'
        ]
    else:
        out = [
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="group" aria-labelledby="{title_id}" '
            f'aria-describedby="{readout_id}" class="chart-svg">'
        ]
    out += _axes(chart, scale, look)
    for band in chart.bands:
        top, bottom = scale.y(band.high), scale.y(band.low)
        out.append(
            f'<rect class="band" x="{LEFT}" y="{top:.1f}" width="{WIDTH - LEFT - RIGHT}" '
            f'height="{bottom - top:.1f}"{look.band}><title>{escape(band.label)}</title></rect>'
        )
        out.append(
            f'<text class="band-label" x="{WIDTH - RIGHT + 4}" y="{(top + bottom) / 2 + 4:.1f}"'
            f"{look.text}>{escape(_first_word(band.label))}</text>"
        )
    for threshold in chart.thresholds:
        out += _threshold(threshold, scale, look)
    first = True
    for series in chart.series:
        points = sorted(series.points, key=lambda p: p.day)
        if len(points) > 1:
            path = " ".join(f"{scale.x(p.day):.1f},{scale.y(p.value):.1f}" for p in points)
            out.append(
                f'<polyline class="line {series.css}" points="{path}"{look.line(series.css)}/>'
            )
        for point in points:
            label = escape(point.label)
            x, y = scale.x(point.day), scale.y(point.value)
            marker = _marker(point.mark, x, y)
            if standalone:
                out.append(f"<g{look.point(series.css, point.mark)}>{marker}</g>")
                continue
            tabindex = "0" if first else "-1"
            first = False
            out.append(
                f'<g class="pt {series.css} {escape(point.mark)}" tabindex="{tabindex}" '
                f'role="img" aria-label="{label}"><title>{label}</title>{marker}</g>'
            )
    out.append("</svg>")
    return "".join(out)


class _Look:
    """The presentation attributes of each kind of element: none for the app (its stylesheet
    styles the classes), the app's screen palette when standalone."""

    def __init__(self, standalone: bool) -> None:
        self.standalone = standalone
        self.grid = ' stroke="#e3e6ea" stroke-width="1"' if standalone else ""
        self.text = f" {_TEXT}" if standalone else ""
        self.band = ' fill="#dce9f7"' if standalone else ""
        self.threshold = (
            f' fill="none" stroke="{RED}" stroke-width="1.5" stroke-dasharray="6 4"'
            if standalone
            else ""
        )

    def line(self, css: str) -> str:
        if not self.standalone:
            return ""
        dash = ' stroke-dasharray="2 3"' if css == "s-srs" else ""
        return f' fill="none" stroke="{SERIES_COLOURS.get(css, ACCENT)}" stroke-width="2"{dash}'

    def point(self, css: str, mark: str) -> str:
        fill = MARK_COLOURS.get(mark) or SERIES_COLOURS.get(css, ACCENT)
        return f' fill="{fill}" stroke="#ffffff" stroke-width="1.5"'


def _first_word(label: str) -> str:
    return label.split(":")[0]


def _marker(mark: str, x: float, y: float) -> str:
    """Shape carries the meaning colour carries: an alert is a diamond, a red status a square."""
    if mark == "alert":
        return f'<path d="M{x:.1f},{y - 6:.1f} l6,6 l-6,6 l-6,-6 z"/>'
    if mark == "red":
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5"/>'


def _axes(chart: Chart, scale: _Scale, look: _Look) -> list[str]:
    out = []
    step = chart.y_step or (chart.y_max - chart.y_min) / 4
    value = chart.y_min
    while value <= chart.y_max + 1e-9:
        y = scale.y(value)
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"'
            f"{look.grid}/>"
        )
        out.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end"{look.text}>'
            f"{number(value)}</text>"
        )
        value += step
    days = sorted({p.day for s in chart.series for p in s.points})
    shown = days if len(days) <= 6 else [days[round(i * (len(days) - 1) / 5)] for i in range(6)]
    for day in dict.fromkeys(shown):
        out.append(
            f'<text class="tick" x="{scale.x(day):.1f}" y="{HEIGHT - 8}" text-anchor="middle"'
            f"{look.text}>{escape(short_day(day))}</text>"
        )
    return out


def _threshold(threshold: Threshold, scale: _Scale, look: _Look) -> list[str]:
    steps: Sequence[tuple[date, float]] = sorted(threshold.steps)
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
        f'<polyline class="threshold" points="{" ".join(coords)}"{look.threshold}>'
        f"<title>{label}</title></polyline>",
        f'<text class="threshold-label" x="{WIDTH - RIGHT + 4}" y="{last_y + 4:.1f}"{look.text}>'
        f"{escape(_first_word(threshold.label))} {number(steps[-1][1])}</text>",
    ]
