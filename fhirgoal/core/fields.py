"""The stored document's field names, in one place (the layout: store/repository.py; the search
index: fhir/search/index.py, which says what each index field holds).

Short on purpose: every stored document carries them, and every query names them. They sit on
the ground floor because the access conditions (core/access.py) test them too.
"""

from __future__ import annotations

# ---- the version (store/repository.py) ----------------------------------------------------
VERSION = "v"  # versionId, an int
LAST_UPDATED = "lu"  # meta.lastUpdated, a datetime
METHOD = "op"  # the interaction that made the version (POST, PUT, PATCH, DELETE)
JSON = "json"  # the resource's exact JSON text
DELETED = "del"  # a deletion's tombstone (its search index cleared)
PENDING = "pend"  # after-write hooks not all finished (fhir/hooks.py)
# Facts the server keeps with a version, beside its search index and never part of the resource
# (fhir/hooks.py WriteEvent.server_fields: a Subscription's reach). A sub-document by name; not
# indexed, not searchable, dropped with the version it belongs to.
SERVER = "srv"

# ---- the search index (fhir/search/index.py) ------------------------------------------------
TOKEN = "tok"
REFERENCE = "ref"
COMPARTMENT = "comp"  # the patient compartment, "Patient/123"
STRING = "str"
NUMBER = "num"
DATE_LOW = "dtlo"
DATE_HIGH = "dthi"
# `ref` also holds paired keys, a patient and a code or date in one key (store/pairs.py), each
# starting with this mark, which no reference key starts with (theirs start with a parameter code)
PAIR_MARK = "^"
# unindexed: the exact copies (the indexed field's name + "x"), date pairs, sort keys, missing
TOKEN_EXACT = "tokx"
REFERENCE_EXACT = "refx"
STRING_EXACT = "strx"
NUMBER_EXACT = "numx"
DATES = "dt"
SORT_KEYS = "srt"
MISSING = "miss"

# Multikey string indexes, one per kind of search value. The other search fields are not
# indexed, since every indexed key costs the database CPU on each write: `dt` and the copies
# `refx`, `tokx`, ... are the exact checks applied after an indexed field has narrowed the
# candidates, `miss` the residual check of `:missing=true`, `srt` the sort keys.
INDEX_FIELDS = (TOKEN, REFERENCE, COMPARTMENT, STRING, NUMBER, DATE_LOW, DATE_HIGH)

ID = "_id"
IndexKey = tuple[tuple[str, int], ...]
# The indexes of the search fields, by name (store/repository.py builds them on each type's
# current collection). The reference and compartment fields are indexed compound with the id
# after them, the order of a search without `_sort` (keyset paging on the id,
# fhir/search/engine.py): the matches of one key (a patient's Observations, a compartment, a
# Goal's ratings for `_revinclude`) are then read in that order. MongoDB serves such a page from
# the index without sorting and stops after it; the embedded database still sorts what it
# fetched, but from presorted input, at a fraction of the comparisons (measured: 4.9 -> 4.15 ms
# of database CPU for a page of 20 of a patient's 50 Observations). A compound key costs the
# embedded database more to write than a single-field one (measured: +0.17 ms per insert of an
# Observation with 13 indexed keys, all compound), so the fields with many keys per resource
# (tokens, strings, numbers, dates), whose searches are rarely the whole selection, keep
# single-field indexes. A compound index can lead only one multikey field (MongoDB refuses to
# index "parallel arrays"), so two search fields never share one: a second condition (patient +
# code, patient + date) is checked on the candidates of the first.
SEARCH_INDEXES: dict[str, IndexKey] = {
    "ref_id": ((REFERENCE, 1), (ID, 1)),
    "comp_id": ((COMPARTMENT, 1), (ID, 1)),
    **{name: ((name, 1),) for name in (TOKEN, STRING, NUMBER, DATE_LOW, DATE_HIGH)},
}
# Every field the search index writes, and `pend`, which is indexed only on the types that have
# after-write hooks, so other writes pay nothing for it.
SEARCH_FIELDS = (
    *INDEX_FIELDS,
    MISSING,
    DATES,
    SORT_KEYS,
    REFERENCE_EXACT,
    TOKEN_EXACT,
    STRING_EXACT,
    NUMBER_EXACT,
    PENDING,
)

# The sort of server-side searches that want the most recently changed first.
NEWEST_FIRST = [(LAST_UPDATED, -1)]
