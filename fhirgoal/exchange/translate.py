"""What the sync does to a resource crossing between fhirgoal and an EHR, whatever the dialect.

- **Identity**: every copy the sync writes carries an identifier naming the resource at its
  origin, system = the origin server's FHIR base + "/" + type, value = its id there (issue 15:
  "conditional create on an identifier fhirgoal assigns"). Writing the copy again is a
  conditional interaction on that identifier (https://hl7.org/fhir/R4/http.html#ccreate,
  #cond-update), so a repeated delivery or pull changes nothing. The copy's `meta.source`
  (https://hl7.org/fhir/R4/resource-definitions.html#Meta.source) names the origin's version
  (`<base>/<type>/<id>/_history/<vid>`): the sync tells its own writes from other edits by it.
- **References** (https://hl7.org/fhir/R4/references.html): each literal reference is translated
  through the links (exchange/links.py); a target the other side does not hold becomes a logical
  reference by the identifier its copy would carry (Reference.identifier), still resolvable once
  the copy exists.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

_REFERENCE = re.compile(
    r"^(?:(?P<base>.+)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)
# kept from meta when a resource is sent: what it claims to conform to and its labels
_META_KEPT = ("profile", "security", "tag")


def origin_system(base: str, rt: str) -> str:
    return f"{base.rstrip('/')}/{rt}"


def origin_identifier(base: str, rt: str, rid: str) -> dict[str, str]:
    return {"system": origin_system(base, rt), "value": rid}


def version_url(base: str, rt: str, rid: str, vid: int | str) -> str:
    return f"{base.rstrip('/')}/{rt}/{rid}/_history/{vid}"


def parse_reference(text: str, base: str) -> tuple[str, str] | None:
    """(type, id) of a literal reference to `base`'s resources: relative, or absolute on `base`;
    None for anything else (another server, a contained `#ref`, a URN)."""
    match = _REFERENCE.match(text)
    if match is None:
        return None
    ref_base = match.group("base")
    if ref_base is not None and ref_base.rstrip("/") != base.rstrip("/"):
        return None
    return match.group("type"), match.group("id")


def references(value: Any) -> Iterator[dict[str, Any]]:
    """Every Reference (an object with a string `reference`) in a resource."""
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value
        for child in value.values():
            yield from references(child)
    elif isinstance(value, list):
        for child in value:
            yield from references(child)


def rewrite_references(
    resource: dict[str, Any],
    base: str,
    translate: Callable[[str, str], dict[str, Any] | None],
) -> None:
    """Replace, in place, each reference to `base`'s resources by what `translate(type, id)`
    gives (the new Reference's parts; None leaves it as it is). Display text is kept."""
    for reference in list(references(resource)):
        parsed = parse_reference(reference["reference"], base)
        if parsed is None:
            continue
        replacement = translate(*parsed)
        if replacement is None:
            continue
        display = reference.get("display")
        reference.clear()
        reference.update(replacement)
        if display is not None and "display" not in replacement:
            reference["display"] = display


def for_sending(resource: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the resource (references are rewritten in place next) without what the
    receiving server assigns (id, versionId, lastUpdated) or what concerns this server only
    (meta.source)."""
    out = {k: copy.deepcopy(v) for k, v in resource.items() if k not in ("id", "meta")}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k in _META_KEPT}
    if meta:
        out["meta"] = meta
    return out


def with_origin(
    resource: dict[str, Any], origin_base: str, rt: str, rid: str, vid: int | str, drop_base: str
) -> dict[str, Any]:
    """`resource` as the copy of `rt/rid` version `vid` at `origin_base`: the origin identifier
    added, identifiers naming `drop_base`'s resources (the receiving side's own) removed, and
    meta.source set."""
    own = f"{drop_base.rstrip('/')}/"
    origin = origin_identifier(origin_base, rt, rid)
    identifiers = [
        i
        for i in resource.get("identifier") or []
        if not (isinstance(i, dict) and str(i.get("system", "")).startswith(own)) and i != origin
    ]
    out = dict(resource)
    out["identifier"] = [*identifiers, origin]
    out["meta"] = {**(resource.get("meta") or {}), "source": version_url(origin_base, rt, rid, vid)}
    return out


def content(resource: dict[str, Any]) -> dict[str, Any]:
    """What two versions are compared on: everything but the id and the server's meta."""
    out = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k in _META_KEPT}
    if meta:
        out["meta"] = meta
    return out


def supports_identifier(resource: dict[str, Any]) -> bool:
    """Whether the type has a top-level identifier list (every type the sync moves does)."""
    return resource.get("resourceType") not in ("Bundle", "Binary", "Parameters")


def patient_of(resource: dict[str, Any]) -> str:
    """The patient an EHR's resource belongs to: itself, its subject or its patient (the
    reference as the EHR wrote it); else the resource's own reference."""
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id')}"
    for key in ("subject", "patient"):
        reference = (resource.get(key) or {}).get("reference")
        if isinstance(reference, str):
            return reference
    return f"{resource.get('resourceType')}/{resource.get('id')}"
