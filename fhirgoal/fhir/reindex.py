"""Rebuilding the search index of stored resources (after a SearchParameter or index change).

https://hl7.org/fhir/R4/searchparameter.html : the index is derived data, computed at write time
from the SearchParameter expressions; this recomputes it for resources already stored. Each
update is conditional on the version it read, so a concurrent write (which indexes itself) wins.

The database records the index format its resources were indexed with (INDEX_FORMAT); a server
that finds another one at start-up reindexes everything before it serves (`upgrade_index`), so a
database written by an earlier release keeps answering searches.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from fhirgoal.fhir.service import FhirService

log = structlog.get_logger(__name__)

# The layout of the stored search keys (fhir/search/index.py). Change it whenever that layout
# changes: servers then reindex the stored resources at start-up.
#   1  every key indexed (no format recorded)
#   2  one coarse indexed key per value, exact keys in unindexed copies; `miss` unindexed
#   3  `ref` and `comp` indexed compound with the id (core/fields.py SEARCH_INDEXES); no keys
#      of narrowed reference parameters (`patient`: fhir/search/registry.py)
#   4  paired keys in `ref`: a patient's compartment with a code or date (store/pairs.py)
#   5  no keys of union parameters (`combo-code`: fhir/search/unions.py) but their sort keys;
#      the date pairs also in `refx`, for a ranged pair's exact check (store/pairs.py)
#   6  the low ends of dates paired too (`dtlo:`), for `lt`/`le`/`sa` and keyset pages sorted
#      newest first (store/pairs.py)
INDEX_FORMAT = 6


async def reindex(
    service: FhirService,
    resource_types: list[str],
    on_type: Callable[[str, int], None] = lambda rt, total: None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> int:
    """Reindex every live resource of the given types; returns how many were rewritten."""
    rewritten = 0
    for rt in await service.repo.present_types(resource_types):  # a type never written has none
        table = service.registry.for_type(rt)
        on_type(rt, await service.repo.count_all(rt))
        async for batch in service.repo.live_versions(rt):
            for version in batch:
                assert version.resource is not None
                if await service.repo.set_index(version, table.index_fields(version.resource)):
                    rewritten += 1
            on_progress(len(batch))
    return rewritten


async def upgrade_index(service: FhirService, pending_types: frozenset[str] = frozenset()) -> int:
    """Reindex every stored resource if the database's index format is not INDEX_FORMAT (a
    database that records none but holds resources predates the record); returns how many
    resources were rewritten."""
    repo = service.repo
    stored = await repo.index_format()
    if stored == INDEX_FORMAT:
        return 0
    types = list(service.conformance.stored_types)
    rewritten = 0
    if stored is not None or await repo.holds_resources(types):
        log.warning("search index format changed: reindexing", stored=stored, now=INDEX_FORMAT)
        dropped = await repo.drop_unused_indexes(types, pending_types)
        rewritten = await reindex(service, types)
        log.warning("reindexed", resources=rewritten, dropped_indexes=dropped)
    await repo.set_index_format(INDEX_FORMAT)
    return rewritten
