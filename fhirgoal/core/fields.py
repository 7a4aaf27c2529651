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

# ---- the search index (fhir/search/index.py) ------------------------------------------------
TOKEN = "tok"
REFERENCE = "ref"
COMPARTMENT = "comp"  # the patient compartment, "Patient/123"
STRING = "str"
NUMBER = "num"
DATE_LOW = "dtlo"
DATE_HIGH = "dthi"
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
