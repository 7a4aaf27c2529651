"""Section narrative of the FHIR document: each report section as XHTML.

R4 narrative (https://hl7.org/fhir/R4/narrative.html): a `div` in the XHTML namespace using only
the basic HTML elements R4 allows (p, table, caption, thead, tbody, tr, th, td), with every text
escaped. Status `generated`: the narrative is generated from the section's data.
"""

from __future__ import annotations

from html import escape

from fhirgoal.evidence.report import Section, Table

XHTML = "http://www.w3.org/1999/xhtml"


def narrative(section: Section) -> dict[str, str]:
    parts = [f"<p>{escape(s)}</p>" for s in section.sentences]
    parts += [_table(t) for t in section.tables]
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{"".join(parts)}</div>'}


def summary(lines: list[str]) -> dict[str, str]:
    body = "".join(f"<p>{escape(line)}</p>" for line in lines)
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


def _table(table: Table) -> str:
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    body = f"<tbody>{rows}</tbody>" if rows else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead>{body}</table>"
