"""The chart model: a time axis (session dates) against a bounded value axis (ORS/SRS 0-40,
T-score 20-80, PHQ-9 0-27...), with

- series: points joined in date order; each point carries a label (its date and value in words)
  and a mark (alert, status colour) that the drawing renders by shape as well as colour, so that
  print in black and white and colour-blind readers lose nothing (WCAG 2.1 1.4.1 Use of Color);
- bands: a shaded range (the reliable-change band intake +/- RCI);
- thresholds: a dashed step line (the clinical cutoff, which changes with the client's age band;
  the SRS alliance threshold), labelled at the right end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date


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

    @property
    def empty(self) -> bool:
        return not any(s.points for s in self.series)


def short_day(day: date) -> str:
    return f"{day.day} {day.strftime('%b')}"


def long_day(day: date) -> str:
    return f"{day.day} {day.strftime('%b %Y')}"


def number(value: float) -> str:
    """A value as the charts print it: one decimal at most, no trailing zero."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def summary(chart: Chart) -> str:
    """One line saying what the chart holds: its size and latest point."""
    points = sorted((p for s in chart.series for p in s.points), key=lambda p: p.day)
    if not points:
        return ""
    return f"{len(points)} points; latest: {points[-1].label}"
