"""The EHR's look, from `smart_style_url` (SMART App Launch 2.2, app-launch.html "Styling"): a
JSON document whose values (`color_background`, `color_text`, `color_highlight`, `color_error`,
`color_success`, `dim_font_size`, `dim_border_radius`, `font_family_body`, `font_family_heading`)
the app applies so that it looks at home in the EHR's frame.

Applied as CSS custom properties in a per-launch stylesheet served by the app itself
(`/app/c/{key}/style.css`), because the CSP allows no inline style. Every value is parsed and
re-emitted from a strict grammar, never copied: colours as `#rgb`/`#rrggbb`(`aa`) or
`rgb()`/`rgba()` of numbers, sizes as a number with `px`, `em`, `rem` or `%`, fonts as family names
of letters, digits, spaces and hyphens (quoted by the app) or generic families. Anything else, a
`url(...)`, a `;` or `}` to break out of the declaration, an `expression()`, is dropped, so the EHR
can change colours and fonts but cannot inject CSS or make the browser fetch anything. The
document itself is fetched once per launch with a short timeout and a size cap; a failure leaves
the app's own look.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import orjson

MAX_STYLE_BYTES = 16 * 1024
STYLE_TIMEOUT = httpx.Timeout(3.0)
# SMART styling property -> the app's custom property (static/app.css)
COLOURS = {
    "color_background": "--paper", "color_text": "--ink", "color_highlight": "--accent",
    "color_error": "--red", "color_success": "--green",
}  # fmt: skip
SIZES = {"dim_font_size": "--font-size", "dim_border_radius": "--radius"}
FONTS = {"font_family_body": "--font-body", "font_family_heading": "--font-heading"}

_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")
_RGB = re.compile(r"rgba?\(\s*\d{1,3}%?\s*(?:,\s*\d{1,3}%?\s*){2}(?:,\s*(?:0|1|0?\.\d+)\s*)?\)")
_SIZE = re.compile(r"(\d{1,3}(?:\.\d{1,3})?)(px|em|rem|%)")
_FAMILY = re.compile(r"[A-Za-z0-9][A-Za-z0-9 \-]{0,40}")
GENERIC_FAMILIES = frozenset(
    {"serif", "sans-serif", "monospace", "cursive", "fantasy", "system-ui", "ui-sans-serif",
     "ui-serif", "ui-monospace", "ui-rounded"}
)  # fmt: skip


def colour(value: object) -> str | None:
    if isinstance(value, str) and (_HEX.fullmatch(value.strip()) or _RGB.fullmatch(value.strip())):
        return value.strip()
    return None


def size(value: object) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1000:
        return f"{value}px"  # SMART gives dimensions as numbers of pixels or as CSS lengths
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    return f"{match.group(1)}{match.group(2)}" if match else None


def fonts(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    families = []
    for raw in value.split(","):
        name = raw.strip().strip("'\"").strip()
        if name.lower() in GENERIC_FAMILIES:
            families.append(name.lower())
        elif _FAMILY.fullmatch(name):
            families.append(f'"{name}"')
        else:
            return None  # one bad name: the whole value is not trusted
    return ", ".join(families[:8]) or None


def sanitise(document: dict[str, object]) -> dict[str, str]:
    """The custom properties the document sets validly; the rest is left out."""
    found: dict[str, str] = {}
    for rules, parse in ((COLOURS, colour), (SIZES, size), (FONTS, fonts)):
        for name, prop in rules.items():
            value = parse(document.get(name))
            if value is not None:
                found[prop] = value
    return found


async def fetch_style(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    """The sanitised style of `url`; empty when it cannot be had."""
    if urlsplit(url).scheme not in ("http", "https"):
        return {}
    try:
        response = await http.get(url, headers={"Accept": "application/json"},
                                  timeout=STYLE_TIMEOUT)  # fmt: skip
    except httpx.HTTPError:
        return {}
    if response.status_code != 200 or len(response.content) > MAX_STYLE_BYTES:
        return {}
    try:
        document = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return sanitise(document) if isinstance(document, dict) else {}


def stylesheet(style: dict[str, str]) -> str:
    """`:root` with the custom properties (values already sanitised)."""
    declarations = "".join(f"  {prop}: {value};\n" for prop, value in sorted(style.items()))
    return f":root {{\n{declarations}}}\n"
