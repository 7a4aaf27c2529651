"""Rebuilding the search index of stored resources (after a SearchParameter or index change).

https://hl7.org/fhir/R4/searchparameter.html : the index is derived data, computed at write time
from the SearchParameter expressions; this recomputes it for resources already stored. Each
update is conditional on the version it read, so a concurrent write (which indexes itself) wins.
"""

from __future__ import annotations

from collections.abc import Callable

from fhirgoal.fhir.service import FhirService


async def reindex(
    service: FhirService,
    resource_types: list[str],
    on_type: Callable[[str, int], None] = lambda rt, total: None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> int:
    """Reindex every live resource of the given types; returns how many were rewritten."""
    rewritten = 0
    for rt in resource_types:
        table = service.registry.for_type(rt)
        on_type(rt, await service.repo.count_all(rt))
        async for batch in service.repo.live_versions(rt):
            for version in batch:
                assert version.resource is not None
                if await service.repo.set_index(version, table.index_fields(version.resource)):
                    rewritten += 1
            on_progress(len(batch))
    return rewritten
