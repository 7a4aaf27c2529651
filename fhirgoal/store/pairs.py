"""Paired keys: a patient's reference and a code or a date in ONE indexed key, for the searches
clients send most (https://hl7.org/fhir/R4/search.html#combining): a patient's Observations of a
code (`Observation?subject=Patient/1&code=http://loinc.org|8302-2`, the compartment form
`Patient/1/Observation?code=...`, or `Observation?code=...` under a patient-scoped SMART token)
or since a date (`...&date=ge2026-01-01`).

Each condition alone has an index (`ref`, `comp`, `tok`, `dthi`), but the patient's drives, and
every one of the patient's resources is read to check the other (measured: 50 read for 10
matches). MongoDB cannot index two array fields in one compound index ("parallel arrays"), and
an index of their own would cost every write of the type the upkeep of one more multikey index
(measured on the embedded database: +12-25% database CPU per Observation create, for the same
keys in a `pair` field of their own). So the pairs are extra keys of the reference index `ref`,
marked apart from every reference key (MARK; a reference key starts with a parameter's code):

    ^subject=Patient/1|tok:code|http://loinc.org|8302-2   the reference key | tok : exact token
    ^subject=Patient/1|dthi:date|2026-04-01T00:00...    the high end of each date range
    ^subject=Patient/1|dtlo:date|2026-03-01T00:00...    and its low end

written for each reference of the type's compartment parameters (Pairing.members) to a Patient,
the first parameter's always, another's when the first does not name the same patient. A
resource has the key `^subject=Patient/1|tok:code|http://loinc.org|8302-2` exactly when it has
both keys: the pair selects the same resources as the reference and token conditions, and the
shaped query sends it in their place, with nothing left to check on each document (the embedded
database costs about as much again for every further condition: measured, 3.2 -> 6 ms for a
page of 10). The compartment form names no reference; it pairs as an `$in` over the member
parameters (`^subject=Patient/1|...`, `^performer=Patient/1|...`), again exactly its matches.
Only exact token keys (`system|code`, `|code`) are paired: a code without a system (`code=x`)
drives from the patient as before.

The keys of one reference and one field keep the order of the field's own keys (a shared prefix),
so an equality or `$in` on `tokx`, or a bounded range on `dthi` or `dtlo`, is the same test on
the pair once prefixed. A bare range on an array only narrows (its bounds may hold for two
different keys: MongoDB matches an Observation of the patient from last year, whose pair is below
the range, by its `subject=` key, above it), so a ranged pair is sent twice: the bare range
drives, and the same range as one key's `$elemMatch` makes it exact. That check is made on the
copy `refx`, which holds the date pairs for it (`ranged_pairs`; on `ref` the embedded database
would scan); it stands in for the reference, the compartment and the exact date check (`dt`),
which cost the embedded database a pass each (measured: 4.5 -> 3.55 ms for a page of 20, the pair
alone 3.0). High ends serve `ge`, `gt` and `eb`; low ends `lt`, `le` and `sa` (`eq`, `ap`, `ne`
and `:missing=false` drive from the low ends' range and keep their exact check).

Low ends also serve the next pages of a patient's resources sorted by a paired date, newest first
(`_sort=-date`, fhir/search/engine.py keyset paging): such a page asks for the rows whose sort key
(`srt.date`, the smallest low end) is before the last one's, `{srt.date: {$lt|$lte: X}}`, which
holds exactly when some low end is: the pair range `dtlo:date|` .. `dtlo:date|X`, so the page
reads the rows that remain instead of every one of the patient's (measured, bench
search_vs_driver `date-sort-2`, the second page of 20 of 50: database CPU 2.7-3.0x the raw
driver's on its (subject, date) index -> 2.1x). An ascending sort's `$gt` on the smallest low end
is not "some low end is after", so it is not paired.

The pairs are data: PAIRED below, per type. Each costs every write of that type a few keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhirgoal.core import fields
from fhirgoal.store.planner import conditions_of


@dataclass(frozen=True)
class Pairing:
    """`members`: the reference parameters whose stored keys to a Patient put a resource in that
    patient's compartment (the CompartmentDefinition's, a narrowing replaced by the parameter
    whose keys it uses: Condition's `patient` by `subject`; a test holds them to it);
    `tokens` and `dates`: the token and date parameters paired with them."""

    members: tuple[str, ...]
    tokens: tuple[str, ...]
    dates: tuple[str, ...] = ()


PAIRED: dict[str, Pairing] = {
    "Observation": Pairing(("subject", "performer"), ("code",), ("date",)),
    "Condition": Pairing(("subject", "asserter"), ("code",)),
    "DiagnosticReport": Pairing(("subject",), ("code",), ("date",)),
}
DATE_ENDS = (fields.DATE_LOW, fields.DATE_HIGH)  # the tags of date pairs: the fields' names
MARK = fields.PAIR_MARK
TOKENS = "tok"  # the tag of (exact) token keys in a pair
_RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
# A search naming many codes would need as many pairs: past this, none.
MAX_PAIRED_KEYS = 200


def pair_keys(references: list[str], keys: list[tuple[str, str]]) -> list[str]:
    """`^reference|tag:key` for every reference key and every (tag, key)."""
    return [f"{MARK}{ref}|{tag}:{key}" for ref in references for tag, key in keys]


def ranged_pairs(references: list[str], keys: list[tuple[str, str]]) -> list[str]:
    """The pairs a search compares by range (the dates'), which the copy `refx` holds too: the
    exact check of a ranged pair is made there (the embedded database scans the collection for
    an `$elemMatch` on the indexed `ref`: measured, 3.5 ms -> 360 ms for a page of 20)."""
    return pair_keys(references, [(tag, key) for tag, key in keys if tag in DATE_ENDS])


def member_references(pairing: Pairing, refs: set[str] | list[str]) -> list[str]:
    """The reference keys that pairs are written for: every reference of the first member
    parameter to a Patient (`subject=Patient/1`), and of the others to a Patient that the first
    does not name already (an Observation the patient reported on themself has `subject` and
    `performer` both `Patient/1`; one pair of them is enough for the compartment)."""
    first, *others = pairing.members
    named = [key for key in refs if _member_key(key, (first,))]
    covered = {key.partition("=")[2] for key in named}
    return named + [
        key for key in refs if _member_key(key, others) and key.partition("=")[2] not in covered
    ]


def _member_key(key: str, codes: tuple[str, ...] | list[str]) -> bool:
    code, _, target = key.partition("=")
    return code in codes and target.startswith("Patient/")


def token_keys(code: str, exact: set[str]) -> list[tuple[str, str]]:
    """The paired token keys of parameter `code`: its exact `code|system|x` keys (a search by a
    code alone, `code=x`, drives from the patient as before: each paired key costs writes)."""
    return [(TOKENS, k) for k in sorted(exact) if k.startswith(f"{code}|")]


def paired(resource_type: str, query: dict[str, Any]) -> dict[str, Any]:
    """`query` with a pair test in place of the conditions it implies (same matches), or `query`
    itself when it names no patient with a paired parameter."""
    pairing = PAIRED.get(resource_type)
    if pairing is None:
        return query
    conditions = conditions_of(query)
    found = _pairing(pairing, conditions)
    if found is None:
        return query
    condition, implied = found
    kept = [{key: test} for n, (key, test) in enumerate(conditions) if n not in implied]
    return {"$and": [condition, *kept]} if kept else condition


def _pairing(
    pairing: Pairing, conditions: list[tuple[str, Any]]
) -> tuple[dict[str, Any], set[int]] | None:
    """The pair test and the positions of the conditions it implies, or None."""
    chosen = _patient(pairing, conditions)
    if chosen is None:
        return None
    refs, implied = chosen
    exact = _token_test(conditions, fields.TOKEN_EXACT, [f"{c}|" for c in pairing.tokens])
    if exact is not None and len(refs) * len(exact[1]) <= MAX_PAIRED_KEYS:
        n, keys = exact
        implied = {*implied, n}
        coarse = _token_test(conditions, fields.TOKEN, [f"{c}#" for c in pairing.tokens])
        if coarse is not None and _coarse_implied(keys, coarse[1]):
            implied.add(coarse[0])  # every exact key implies its coarse key
        keyed = sorted(pair_keys(refs, [(TOKENS, k) for k in keys]))
        return {fields.REFERENCE: {"$in": keyed}}, implied
    for n, (field, test) in enumerate(conditions):
        field, test = _as_low_end_range(field, test, pairing.dates)
        code = _date_param(test, pairing.dates) if field in DATE_ENDS else None
        if code is not None and len(refs) == 1:
            # a bare range only narrows (its bounds may hold for two keys): the same range as
            # one key's `$elemMatch` makes it exact (store/planner.py checks it on `refx`), and
            # stands in for the reference, the compartment and the exact date check (`dt`,
            # fhir/search/conditions.py)
            prefix = f"{MARK}{refs[0]}|{field}:"
            ranged = {op: prefix + bound for op, bound in test.items()}
            implied = {*implied, n, *_date_checks(conditions, code, field, test)}
            return {
                "$and": [
                    {fields.REFERENCE: ranged},
                    {fields.REFERENCE: {"$elemMatch": ranged}},
                ]
            }, implied
    return None


def _as_low_end_range(field: str, test: Any, dates: tuple[str, ...]) -> tuple[str, Any]:
    """A keyset page's `{srt.date: {$lt|$lte: X}}` on a paired date's sort key (its smallest
    low end) as the same test on its low ends, `{dtlo: {$gte: date|, $lt|$lte: date|X}}` (some
    low end is before X exactly when the smallest is); any other condition as it is."""
    code = field.removeprefix(f"{fields.SORT_KEYS}.")
    if code == field or code not in dates or not isinstance(test, dict) or len(test) != 1:
        return field, test
    [(op, value)] = test.items()
    if op not in ("$lt", "$lte") or not isinstance(value, str):
        return field, test
    return fields.DATE_LOW, {"$gte": f"{code}|", op: f"{code}|{value}"}


def _date_param(test: Any, codes: tuple[str, ...]) -> str | None:
    """The paired date parameter whose `dthi` or `dtlo` keys a bounded range lies within."""
    if not _is_bounded_range(test):
        return None
    return next(
        (c for c in codes if all(f"{c}|" <= bound <= f"{c}}}" for bound in test.values())), None
    )


def _date_checks(
    conditions: list[tuple[str, Any]], code: str, end_field: str, test: dict[str, str]
) -> set[int]:
    """The positions of the exact checks (`dt`) of the same comparison of one end as the range
    `test` on that end's keys (`end_field`, `dthi` or `dtlo`): `{p: date, hi: {$gt: q}}` beside
    `{$gt: date|q, $lt: date}}` on `dthi`, `{p: date, lo: {$lt: q}}` beside `{$gte: date|,
    $lt: date|q}` on `dtlo` (conditions.py)."""
    end = "hi" if end_field == fields.DATE_HIGH else "lo"
    open_ends = {("$gte", f"{code}|"), ("$lt", f"{code}}}")}
    found = set()
    for n, (field, check) in enumerate(conditions):
        body = check.get("$elemMatch") if isinstance(check, dict) else None
        if field != fields.DATES or not isinstance(body, dict) or set(body) != {"p", end}:
            continue
        bound = body[end]
        if body["p"] != code or not isinstance(bound, dict) or len(bound) != 1:
            continue
        [(op, value)] = bound.items()
        others = {(o, b) for o, b in test.items() if o != op}
        if test.get(op) == f"{code}|{value}" and others <= open_ends and len(others) == 1:
            found.add(n)
    return found


def _patient(
    pairing: Pairing, conditions: list[tuple[str, Any]]
) -> tuple[list[str], set[int]] | None:
    """The reference keys the pair is made of and the conditions they stand for: a member
    parameter's reference to one Patient (`subject=Patient/1`), with a compartment condition
    on the same patient (which it implies); or a compartment condition alone, as every member
    parameter's reference to that patient."""
    compartment: tuple[int, str] | None = None
    reference: tuple[int, str] | None = None
    for n, (field, test) in enumerate(conditions):
        keys = _equal_keys(test)
        if keys is None or len(keys) != 1:
            continue
        if field == fields.COMPARTMENT and compartment is None:
            compartment = (n, keys[0])
        elif (  # only the first member parameter has every pair of its own (member_references)
            field == fields.REFERENCE
            and reference is None
            and _member_key(keys[0], pairing.members[:1])
        ):
            reference = (n, keys[0])
    if reference is not None:
        at, key = reference
        same = compartment is not None and key.partition("=")[2] == compartment[1]
        return [key], {at, compartment[0]} if same and compartment else {at}
    if compartment is not None:
        at, patient = compartment
        return [f"{member}={patient}" for member in pairing.members], {at}
    return None


def _token_test(
    conditions: list[tuple[str, Any]], field: str, prefixes: list[str]
) -> tuple[int, list[str]] | None:
    """The first equality or `$in` on `field` whose keys all lie under the prefixes: on `tokx`,
    exact keys of paired parameters (`code|system|x`; a search value without a system has only
    its coarse key there, `code#x`, which is not paired, so that test pairs with nothing)."""
    for n, (name, test) in enumerate(conditions):
        keys = _equal_keys(test)
        if name == field and keys is not None and all(_in_spaces(k, prefixes) for k in keys):
            return n, keys
    return None


def _coarse_implied(exact: list[str], coarse: list[str]) -> bool:
    """Does having one of the exact keys imply having one of the coarse keys? (`code|sys|x`
    implies `code#x`.)"""
    wanted = set(coarse)
    for key in exact:
        code, _, rest = key.partition("|")
        if f"{code}#{rest.partition('|')[2]}" not in wanted:
            return False
    return True


def _in_spaces(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(prefix) for prefix in prefixes)


def _equal_keys(test: Any) -> list[str] | None:
    if isinstance(test, str):
        return [test]
    if isinstance(test, dict) and set(test) == {"$in"} and test["$in"]:
        values = test["$in"]
        return values if all(isinstance(v, str) for v in values) else None
    return None


def _is_bounded_range(test: Any) -> bool:
    """A range with a low and a high bound, both strings (so both can be prefixed)."""
    if not isinstance(test, dict):
        return False
    ops = set(test)
    return (
        ops <= _RANGE_OPS
        and len(ops & {"$gt", "$gte"}) == 1
        and len(ops & {"$lt", "$lte"}) == 1
        and all(isinstance(v, str) for v in test.values())
    )
