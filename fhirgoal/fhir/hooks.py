"""Write hooks: rules that other packages attach to the writes of a resource type.

The FHIR layer stays resource-type agnostic; clinical rules (QuestionnaireResponse extraction,
goal status from ratings, session-measure alerts) plug in here. A *preparer* sees a write of its
types first, before it is validated and indexed: it may refuse it, and it returns the resource to
store with what the server adds to it (a reference it resolved: R4 lets a server resolve a logical
reference, https://hl7.org/fhir/R4/references.html#logical), so that the index and the
authorization check see the added content. A hook sees every write of its types twice:

- `before_write`: after the resource passed validation, before anything is stored. It may reject
  the write (raise FhirError) and may plan follow-up work in `event.state`. Nothing is stored when
  it raises, so a rejected write loses nothing and leaves nothing behind. It may also give the
  new version *server fields* (`event.server_fields`): facts the server keeps with the version,
  in the same stored document as the version itself (so written atomically with it), never part
  of the resource, so no client can send, see or change them (core/fields.py SERVER; read back
  with `Version.server`).
- `after_write`: once the new version is stored. Follow-up writes go through the FhirService
  again, so they are validated, versioned and indexed like any other write. They are the
  server's own writes, not the request's user's: they run as `server_work()`
  (core/delegation.py), so EHR sync never sends them with the user's token.

Inside a unit of work (a transaction Bundle, store/units.py) the after-hooks of the unit's writes
wait until its writes are done and then run once for all of them (`HookSet.after_all`; the
service's `settle`), before the commit and as part of it. A hook that derives state from many
writes (a goal's status from its ratings) then decides once per thing it keeps in step, not once
per write: a `CoalescingHook` is handed all the unit's events at once. That is what a transaction
means (no one sees its intermediate states) and why the rules must be convergent (below).

Crash safety: a write whose type has after-hooks is stored with a `pending` mark, cleared once
every after-hook has finished. At start-up the service re-runs the after-hooks of every version
still marked (`FhirService.finish_pending`). For that to be correct, after-hooks must be
*convergent*: they bring derived state in line with the resource's current version and never
depend on the previous version having been seen (`event.previous` is informative only).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from fhirgoal.core.delegation import server_work
from fhirgoal.core.errors import Issue

if TYPE_CHECKING:
    from fhirgoal.core.access import AccessContext
    from fhirgoal.store.repository import Version


@dataclass
class WriteEvent:
    """One write as the hooks see it."""

    access: AccessContext
    resource_type: str
    id: str
    # The resource as it will be (or was) stored, meta included; None for a deletion.
    resource: dict[str, Any] | None
    previous: Version | None
    version: Version | None = None  # set once the write is stored
    state: dict[str, Any] = field(default_factory=dict)  # what before_write planned
    hooks: list[WriteHook] = field(default_factory=list)  # the hooks interested in this write
    warnings: list[Issue] = field(default_factory=list)  # accepted, but worth telling the client
    outbox: bool = False  # outbound work was recorded for it (fhir/outbox.py)
    # kept with the new version by the server, by name (see before_write above); not for deletions
    server_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def deleted(self) -> bool:
        return self.resource is None


class WriteHook(Protocol):
    resource_types: frozenset[str]

    def interested(self, event: WriteEvent) -> bool:
        """Cheap test: does this write concern the hook at all? (Most writes concern none, and
        then cost nothing extra: no pending mark, no second round trip.)"""
        ...

    async def before_write(self, event: WriteEvent) -> None: ...

    async def after_write(self, event: WriteEvent) -> None: ...


@runtime_checkable
class CoalescingHook(Protocol):
    """A hook that keeps derived state in step with many writes at once: handed every event of
    a unit of work together, it brings each thing it derives in line once (after_write of each
    event would do the same work once per event)."""

    async def after_writes(self, events: list[WriteEvent]) -> None: ...


class Preparer(Protocol):
    resource_types: frozenset[str]

    async def prepare(
        self, access: AccessContext, resource: dict[str, Any], previous: Version | None
    ) -> dict[str, Any]:
        """The resource to validate, index and store (raise FhirError to refuse the write).
        `previous`: the current version an update replaces (None for a create)."""
        ...


class HookSet:
    """The hooks and preparers of each resource type, in registration order."""

    def __init__(self) -> None:
        self._by_type: dict[str, list[WriteHook]] = defaultdict(list)
        self._preparers: dict[str, list[Preparer]] = defaultdict(list)

    def register(self, hook: WriteHook) -> None:
        for rt in hook.resource_types:
            self._by_type[rt].append(hook)

    def register_preparer(self, preparer: Preparer) -> None:
        for rt in preparer.resource_types:
            self._preparers[rt].append(preparer)

    async def prepare(
        self, access: AccessContext, resource: dict[str, Any], previous: Version | None
    ) -> dict[str, Any]:
        for preparer in self._preparers.get(resource["resourceType"], ()):
            resource = await preparer.prepare(access, resource, previous)
        return resource

    def for_type(self, rt: str) -> list[WriteHook]:
        return self._by_type.get(rt, [])

    def types_with_hooks(self) -> list[str]:
        return sorted(rt for rt, hooks in self._by_type.items() if hooks)

    async def before(self, event: WriteEvent) -> None:
        event.hooks = [h for h in self.for_type(event.resource_type) if h.interested(event)]
        for hook in event.hooks:
            await hook.before_write(event)

    async def after(self, event: WriteEvent) -> None:
        # what a rule writes is derived by the server, not the request's user's own write: it
        # never goes to an EHR with the user's token (core/delegation.py)
        with server_work():
            for hook in event.hooks:
                await hook.after_write(event)

    async def after_all(self, events: list[WriteEvent]) -> None:
        """The after-hooks of several writes (a unit of work's), each hook once: a coalescing
        hook with all the events that concern it, any other with each of them in order."""
        hooks: list[WriteHook] = []
        for event in events:
            hooks += [h for h in event.hooks if h not in hooks]
        with server_work():  # derived writes: the server's own (see `after`)
            for hook in hooks:
                mine = [e for e in events if hook in e.hooks]
                if isinstance(hook, CoalescingHook):
                    await hook.after_writes(mine)
                    continue
                for event in mine:
                    await hook.after_write(event)


class EntryRecord(NamedTuple):
    """One interaction of a batch or transaction Bundle's entry, as its audit record says it."""

    method: str
    path: str  # "/fhir/Type[/id...]", as the request of a single interaction would have it
    query: bytes
    status: int
    version: Version | None  # what a successful write produced, or what a read answered


class EntryAudit(Protocol):
    """Records the entries of a batch or transaction as interactions of their own (auth/audit.py
    installs it on the service). Inside a transaction it runs in the unit of work, so the
    records commit with the entries or not at all."""

    async def __call__(
        self, access: AccessContext, address: str | None, records: list[EntryRecord], /
    ) -> None: ...
