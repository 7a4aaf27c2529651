"""Payer connections: where a payer takes attachments, how fhirgoal authenticates to it, and who
fhirgoal is to it.

A payer connection is a Backend Services connection (exchange/backend_connections.py: the
payer's base, the client id it registered fhirgoal under, the `system/` scopes, a signing key
sealed at rest) with what a Da Vinci CDex `$submit-attachment` needs
(https://hl7.org/fhir/us/davinci-cdex/OperationDefinition-submit-attachment.html):

- `organization`: the payer's Organization on this server ("Organization/acme"), the requester
  of its CDex Tasks (evidence/cdex/) and the recipient of what is sent to it;
- `submit_url`: the endpoint of the operation (default `<base>/$submit-attachment`; CDex allows
  any HTTP endpoint);
- `payer_id`: the `PayerId` the endpoint knows the payer by (an endpoint may serve several);
- `organization_id`, `provider_id`: the `OrganizationId` / `ProviderId` the payer knows this
  practice and its clinician by (Type 2 / Type 1 NPI; CDex: at least one of them);
- `member_system`: the identifier system of the payer's member ids on Patient.identifier (the
  `MemberId` of unsolicited submissions); without it a Patient identifier of type `MB`
  (http://terminology.hl7.org/CodeSystem/v2-0203, member number) is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.exchange.backend_connections import (
    BackendConnection,
    BackendConnectionError,
    BackendConnectionStore,
)

COLLECTION = "payer_connections"
NPI = "http://hl7.org/fhir/sid/us-npi"
# What fhirgoal asks a payer's authorization server for by default: CDex names no scope for
# $submit-attachment (an operation on Claim); the payer's documentation decides (--scopes).
DEFAULT_SCOPES = "system/Claim.u system/DocumentReference.c"


@dataclass(frozen=True, kw_only=True)
class PayerConnection(BackendConnection):
    kind: ClassVar[str] = "PayerConnection"
    sealing: ClassVar[str] = "payer-connection"

    organization: str  # "Organization/{id}" on this server
    submit_url: str | None = None
    payer_id: dict[str, str] | None = None
    organization_id: dict[str, str] | None = None
    provider_id: dict[str, str] | None = None
    member_system: str | None = None

    @property
    def endpoint(self) -> str:
        """Where `$submit-attachment` is posted."""
        return self.submit_url or f"{self.base.rstrip('/')}/$submit-attachment"


def parse_identifier(text: str, default_system: str | None = None) -> dict[str, str]:
    """An Identifier from `system|value`, or from a bare value in `default_system` (or none)."""
    system, bar, value = text.rpartition("|")
    if not bar:
        system, value = default_system or "", text
    if not value.strip():
        raise BackendConnectionError(f"{text!r} is not an identifier (system|value)")
    identifier = {"value": value.strip()}
    if system.strip():
        identifier = {"system": system.strip(), **identifier}
    return identifier


class PayerConnectionStore(BackendConnectionStore[PayerConnection]):
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(db, COLLECTION, PayerConnection, "payer")

    async def for_organization(self, organization: str) -> PayerConnection | None:
        """The connection of the payer whose Organization is `organization` ("Organization/x")."""
        doc = await self.collection.find_one({"organization": organization})
        return self.connection(doc) if doc else None

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("organization", unique=True, name="organization")
