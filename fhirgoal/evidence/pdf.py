"""The medical-necessity document as a PDF a human reviewer reads: the same sections, sentences
and tables as the FHIR document (report.py), the charts the clinician app draws, and how to check
the signature.

Rendered with ReportLab's page layout engine (platypus); charts arrive as SVG text (the app's
drawing, fhirgoal/charts/svg.py, in its standalone form: evidence/charts.py) and are converted to
ReportLab drawings by svglib, so the PDF shows the very charts the clinician sees. US Letter, the
payers' paper size. `invariant` output: no creation time or random file id in the PDF, so the
same content gives the same bytes (and hash).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import letter
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import inch
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from svglib.svglib import svg2rlg

from fhirgoal.evidence.report import Section
from fhirgoal.evidence.report import Table as ReportTable

MARGIN = 0.7 * inch
WIDTH = letter[0] - 2 * MARGIN
CHART_WIDTH = WIDTH * 0.9
FONT, BOLD, SIZE, LEADING = "Helvetica", "Helvetica-Bold", 7.5, 9
PAD = 8.0  # a table cell's left + right padding, points
SLACK = 2.0  # so a word measured to fit its column still fits after rounding


@dataclass(frozen=True)
class Cover:
    title: str
    lines: list[str]  # client, period, payer...
    signature_lines: list[str]  # how to verify
    footer: str  # on every page


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontSize=16, spaceAfter=6),
        "h1": ParagraphStyle("h1", parent=base["Heading2"], spaceBefore=10, spaceAfter=4),
        "h2": ParagraphStyle("h2", parent=base["Heading3"], spaceBefore=6, spaceAfter=3),
        "body": ParagraphStyle("body", parent=base["BodyText"], fontSize=9, leading=11.5),
        "cell": ParagraphStyle(
            "cell", parent=base["BodyText"], fontName=FONT, fontSize=SIZE, leading=LEADING
        ),
        "head": ParagraphStyle(
            "head", parent=base["BodyText"], fontName=BOLD, fontSize=SIZE, leading=LEADING
        ),
        "caption": ParagraphStyle("caption", parent=base["Italic"], fontSize=8, spaceBefore=4),
    }


def render_pdf(
    cover: Cover, sections: Sequence[Section], charts: Mapping[str, Sequence[str]]
) -> bytes:
    """The PDF; `charts`: SVG texts by section key (placed after the section's sentences)."""
    styles = _styles()
    story: list[Flowable] = [Paragraph(escape(cover.title), styles["title"])]
    story += [Paragraph(escape(line), styles["body"]) for line in cover.lines]
    for section in sections:
        story += _section(section, charts, styles, "h1")
    story.append(Paragraph("Signature", styles["h1"]))
    story += [Paragraph(escape(line), styles["body"]) for line in cover.signature_lines]
    out = io.BytesIO()

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.drawString(MARGIN, 0.45 * inch, cover.footer)
        canvas.drawRightString(letter[0] - MARGIN, 0.45 * inch, f"Page {doc.page}")
        canvas.restoreState()

    document = SimpleDocTemplate(
        out, pagesize=letter, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
        bottomMargin=MARGIN, title=cover.title, author="fhirgoal", invariant=1,
    )  # fmt: skip
    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()


def _section(
    section: Section,
    charts: Mapping[str, Sequence[str]],
    styles: dict[str, ParagraphStyle],
    level: str,
) -> list[Flowable]:
    heading = section.title + (f" (LOINC {section.code[0]})" if section.code else "")
    head: list[Flowable] = [Paragraph(escape(heading), styles[level])]
    head += [Paragraph(escape(s), styles["body"]) for s in section.sentences]
    # a chart stays on the page of the heading and sentences that introduce it
    head += [chart_flowable(svg) for svg in charts.get(section.key, ())]
    out: list[Flowable] = [KeepTogether(head)]
    for table in section.tables:
        out += _table(table, styles)
    for sub in section.sections:
        out += _section(sub, charts, styles, "h2")
    return out


def _table(table: ReportTable, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    if not table.rows:
        return []
    out: list[Flowable] = []
    if table.caption:
        out.append(Paragraph(escape(table.caption), styles["caption"]))
    widths = _widths(table)
    # A Paragraph wraps but costs ~50 us to lay out, and a 100-session record has thousands of
    # cells: only text wider than its column becomes one (measured: 5x faster tables).
    data: list[list[Any]] = [
        [_cell(c, w, BOLD, styles["head"]) for c, w in zip(table.columns, widths, strict=True)]
    ]
    data += [
        [_cell(c, w, FONT, styles["cell"]) for c, w in zip(row, widths, strict=True)]
        for row in table.rows
    ]
    flowable = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    flowable.setStyle(
        TableStyle([
            ("FONT", (0, 0), (-1, -1), FONT, SIZE),
            ("FONT", (0, 0), (-1, 0), BOLD, SIZE),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8ecf0")),
            ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#9aa5b1")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("TOPPADDING", (0, 0), (-1, -1), 2),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
            ("LEFTPADDING", (0, 0), (-1, -1), PAD / 2),
            ("RIGHTPADDING", (0, 0), (-1, -1), PAD / 2),
        ])
    )  # fmt: skip
    out += [flowable, Spacer(1, 4)]
    return out


def _cell(text: str, width: float, font: str, style: ParagraphStyle) -> Any:
    if stringWidth(text, font, SIZE) <= width - PAD:
        return text
    return Paragraph(escape(text), style)


def _widths(table: ReportTable) -> list[float]:
    """Column widths: each at least its longest word (so a date or a code never breaks), the
    room left shared in proportion to the columns' longest texts (so a long cell wraps)."""
    columns = range(len(table.columns))
    cells = [[(table.columns[i], BOLD), *((row[i], FONT) for row in table.rows)] for i in columns]
    least = [
        min(max(stringWidth(w, f, SIZE) for c, f in col for w in c.split() or [""]), WIDTH / 4)
        + PAD
        + SLACK
        for col in cells
    ]
    wanted = [
        min(max(stringWidth(c, f, SIZE) for c, f in col), WIDTH / 2) + PAD + SLACK for col in cells
    ]
    if sum(least) > WIDTH:  # too many long words: the widest columns give way, to one cap
        return _capped(least)
    spare = WIDTH - sum(least)
    extra = [max(w - m, 0.0) for w, m in zip(wanted, least, strict=True)]
    if not sum(extra):
        return [WIDTH * m / sum(least) for m in least]
    share = min(1.0, spare / sum(extra))
    widths = [m + e * share for m, e in zip(least, extra, strict=True)]
    return [w * WIDTH / sum(widths) for w in widths]


def _capped(least: list[float]) -> list[float]:
    """`least` with the widest columns cut to the one cap that makes them fill the width."""
    ordered = sorted(least)
    for index, width in enumerate(ordered):
        cap = (WIDTH - sum(ordered[:index])) / (len(ordered) - index)
        if width >= cap:
            return [min(w, cap) for w in least]
    return least


def chart_flowable(svg: str) -> Flowable:
    """An SVG chart as a drawing scaled to the page width."""
    drawing = svg2rlg(io.BytesIO(svg.encode("utf-8")))
    if drawing is None:  # svglib could not read it: say so rather than drop it silently
        raise ValueError("chart SVG could not be converted")
    scale = CHART_WIDTH / drawing.width
    drawing.scale(scale, scale)
    drawing.width, drawing.height = drawing.width * scale, drawing.height * scale
    drawing.hAlign = "LEFT"
    return drawing
