"""Two real fhirgoal servers over HTTP for the EHR sync tests: one plays the EHR (FHIRGOAL_AUTH=
smart, fhirgoal registered there as a Backend Services client with its public JWKS), the other is
fhirgoal with a connection to it. Optionally a proxy between them (tests/exchange/ehr_proxy.py)
that can be hostile."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from fhirgoal.auth.clients import Client
from fhirgoal.auth.keys import encryption_key
from fhirgoal.core.jsonio import dumps
from fhirgoal.exchange.connections import (
    DEFAULT_SCOPES,
    SUBSCRIPTION_SCOPE,
    ConnectionStore,
    EhrConnection,
    new_key,
)
from fhirgoal.exchange.ehr_inbound import Puller, PullReport
from fhirgoal.exchange.ehr_install import sync_of
from fhirgoal.exchange.ehr_push import PushLoop
from fhirgoal.exchange.ehr_subscribe import SubscribeReport
from fhirgoal.exchange.ehr_sync import EhrSync
from fhirgoal.exchange.links import LinkStore
from fhirgoal.fhir.service import FhirService
from tests.auth.conftest import TEST_KEK, SmartServer, run_smart
from tests.conftest import RunningServer, fresh_settings, running
from tests.helpers import FHIR_JSON

MRN = "urn:oid:2.16.840.1.113883.19.5"  # the EHR's medical record numbers
CONNECTION = "clinic"
CLIENT_ID = "fhirgoal-sync"
FAST = {
    "outbox_backoff_base_seconds": 0.1,
    "outbox_backoff_max_seconds": 2.0,
    "outbox_poll_seconds": 0.1,
    "outbox_timeout_seconds": 2.0,
    "outbox_lease_seconds": 6.0,
    "subscription_refresh_seconds": 0.5,
    "sync_pull_overlap_seconds": 1.0,
    "key_encryption_key": TEST_KEK,
}


@dataclass
class Pair:
    ehr: SmartServer
    ehr_http: httpx.AsyncClient  # a system client of the EHR (its own users' writes)
    fhirgoal: RunningServer
    connection: EhrConnection
    front: Any = None  # what stands in front of the EHR (a proxy), if anything

    @property
    def service(self) -> FhirService:
        service: FhirService = self.fhirgoal.app.state.fhir
        return service

    @property
    def sync(self) -> EhrSync:
        return sync_of(self.service)

    @property
    def links(self) -> LinkStore:
        return self.sync.links

    @property
    def push(self) -> PushLoop:
        """fhirgoal's push in (exchange/ehr_push.py): its receiver and loop."""
        push: PushLoop = self.fhirgoal.app.state.ehr_push
        return push

    async def subscribe(self) -> SubscribeReport:
        """What `fhirgoal ehr subscribe` does: the EHR's Subscriptions made."""
        return await self.push.subscriber.ensure(self.connection)

    async def pull(self) -> PullReport:
        return await Puller(self.sync).pull(self.connection)

    def our_identifier(self, rt: str, rid: str) -> str:
        return f"{self.fhirgoal.base}/{rt}|{rid}"

    def their_identifier(self, rt: str, rid: str) -> str:
        return f"{self.connection.base}/{rt}|{rid}"

    async def in_ehr(self, rt: str, rid: str) -> list[dict[str, Any]]:
        """The EHR's copies of fhirgoal's `rt/rid` (by the identifier fhirgoal assigns)."""
        response = await self.ehr_http.get(
            f"/{rt}", params={"identifier": self.our_identifier(rt, rid)}
        )
        assert response.status_code == 200, response.text
        return [e["resource"] for e in response.json().get("entry", [])]

    async def in_fhirgoal(self, rt: str, ehr_id: str) -> list[dict[str, Any]]:
        """fhirgoal's copies of the EHR's `rt/ehr_id`."""
        response = await self.fhirgoal.client.get(
            f"/{rt}", params={"identifier": self.their_identifier(rt, ehr_id)}
        )
        assert response.status_code == 200, response.text
        return [e["resource"] for e in response.json().get("entry", [])]

    async def ehr_create(self, resource: dict[str, Any]) -> dict[str, Any]:
        response = await self.ehr_http.post(
            f"/{resource['resourceType']}", content=dumps(resource), headers=FHIR_JSON
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def ehr_history(self, rt: str, rid: str) -> int:
        response = await self.ehr_http.get(f"/{rt}/{rid}/_history")
        assert response.status_code == 200, response.text
        return int(response.json()["total"])


async def register_fhirgoal(
    ehr: SmartServer, jwks: dict[str, Any], scopes: str = DEFAULT_SCOPES
) -> None:
    """fhirgoal as a Backend Services client of the EHR, with its public keys."""
    await ehr.app.state.smart.clients.register(
        Client(client_id=CLIENT_ID, scopes=scopes, jwks=jwks)
    )


@asynccontextmanager
async def ehr_pair(
    mongo_uri: str,
    front: Callable[[str], AbstractAsyncContextManager[Any]] | None = None,
    mapping: str | None = None,
    bulk_export: str | None = None,
    scopes: str = DEFAULT_SCOPES,
    subscribe: bool = False,
    external: bool = False,
    **fhirgoal_settings: Any,
) -> AsyncIterator[Pair]:
    """The EHR and fhirgoal, connected; `front` puts something with a `base` (a proxy) in front
    of the EHR, made from the EHR's base: fhirgoal then reaches the EHR through it. `mapping` is
    the connection's mapping folder (exchange/dialect.py; e.g. the built-in example-ehr): the EHR
    then speaks that dialect. None: the identity dialect. `subscribe`: the connection is marked
    to subscribe (push in), with the scope that needs. `external`: fhirgoal takes the EHR's
    tokens (FHIRGOAL_AUTH=external, the EHR's authorization server its issuer), and the EHR may
    issue tokens for fhirgoal's base (FHIRGOAL_TOKEN_AUDIENCES): an app launched from the EHR
    with fhirgoal as its FHIR server."""
    async with run_smart(mongo_uri) as ehr, AsyncExitStack() as stack:
        ehr_base, in_front = ehr.base, None
        if front is not None:
            in_front = await stack.enter_async_context(front(ehr.base))
            ehr_base = in_front.base
        values = {**FAST, **fhirgoal_settings}
        if external:
            values |= {
                "auth": "external",
                "external_issuer": ehr.base,
                "external_jwks_url": f"{ehr.origin}/auth/jwks",
            }
        async with running(fresh_settings(mongo_uri, prefix="fg", **values)) as fhirgoal:
            service: FhirService = fhirgoal.app.state.fhir
            if external:
                ehr.settings.token_audiences = fhirgoal.base  # read per request
            key = new_key("ES384")
            scopes = f"{scopes} {SUBSCRIPTION_SCOPE}" if subscribe else scopes
            connection = EhrConnection(
                name=CONNECTION,
                base=ehr_base,
                client_id=CLIENT_ID,
                scopes=scopes,
                alg="ES384",
                public_jwk={},
                mapping=mapping,
                patient_system=MRN,
                bulk_export=bulk_export,
                subscribe=subscribe,
            )
            store = ConnectionStore(service.database)
            kek = encryption_key(TEST_KEK, fhirgoal.settings.data_dir)
            await store.add(connection, key, kek)
            stored = await store.get(CONNECTION)
            assert stored is not None
            await register_fhirgoal(ehr, stored.public_jwks(), scopes)
            await sync_of(service).refresh()
            async with await ehr.as_scope("system/*.cruds") as ehr_http:
                yield Pair(ehr, ehr_http, fhirgoal, stored, in_front)


def patient(mrn: str, family: str = "Rivera", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"family": family, "given": ["Alex"]}],
        **extra,
    }


def phq9_total(patient_id: str, total: int, when: str = "2026-09-01T10:00:00Z") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "survey",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}], "text": "PHQ-9"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueInteger": total,
    }
