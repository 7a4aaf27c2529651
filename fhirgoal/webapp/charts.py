"""The app's charts: the shared SVG drawing (fhirgoal/charts/) in the page's HTML.

Each chart is a `<figure>` with its caption, the inline SVG (drawn on the server: no chart
library, no script needed to see it), a readout line that says the focused point
(`aria-live`), and the values as a table for those who prefer one.

Keyboard: the first point of a chart is in the tab order and the arrow keys move between points
(static/app.js, a roving tabindex, WAI-ARIA Authoring Practices); the readout says the focused
point.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

from fhirgoal.charts.model import Chart, long_day, number, summary
from fhirgoal.charts.svg import svg


def render(chart: Chart) -> Markup:
    if chart.empty:
        return Markup('<p class="empty">No data yet.</p>')
    title_id, readout_id = f"{chart.key}-title", f"{chart.key}-readout"
    out = [
        f'<figure class="chart" data-chart="{escape(chart.key)}">',
        f'<figcaption id="{title_id}">{escape(chart.title)}</figcaption>',
        svg(chart, title_id=title_id, readout_id=readout_id),
        f'<p class="readout" id="{readout_id}" aria-live="polite">{escape(summary(chart))}</p>',
        _table(chart),
        "</figure>",
    ]
    return Markup("".join(out))


def _table(chart: Chart) -> str:
    rows = "".join(
        f"<tr><td>{escape(s.name)}</td><td>{escape(long_day(p.day))}</td>"
        f"<td>{escape(number(p.value))}</td><td>{escape(p.label)}</td></tr>"
        for s in chart.series
        for p in sorted(s.points, key=lambda p: p.day)
    )
    return (
        f'<details class="values"><summary>Values of {escape(chart.title)}</summary>'
        '<table><thead><tr><th scope="col">Series</th><th scope="col">Date</th>'
        f'<th scope="col">Value</th><th scope="col">Detail</th></tr></thead><tbody>{rows}</tbody>'
        "</table></details>"
    )
