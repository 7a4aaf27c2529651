"""A payer played by a real HTTP client: registered with its own Backend Services key pair and
scopes bound to its Organization, it gets its tokens from the token endpoint with a signed
assertion (SMART Backend Services), like any payer system would. The server runs in `smart`
mode with the demo clients loaded; the clinician is the demo therapist."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from fhirgoal.auth.clients import Client
from fhirgoal.demo import write_demo
from tests.auth import jose
from tests.auth.conftest import SmartServer, run_smart
from tests.auth.flows import grant, token_request

MRN = "https://fhirgoal.org/fhir/demo-mrn"  # the demo's medical record numbers
PAS_TEMP = "http://hl7.org/fhir/us/davinci-pas/CodeSystem/PASTempCodes"
CDEX_TEMP = "http://hl7.org/fhir/us/davinci-cdex/CodeSystem/cdex-temp"
HREX_TEMP = "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp"


def payer_scopes(org: str) -> str:
    """What a payer is registered for: its own requests (searched to poll them) and its own
    member lists, and Subscriptions (which tell it of what it may search: its own requests)."""
    return (
        f"system/Task.crus?requester=Organization/{org} "
        f"system/Group.cruds?managing-entity=Organization/{org} "
        "system/Subscription.cru"
    )


@dataclass
class Payer:
    org: str  # its Organization's id on the server
    client_id: str
    key: RSAKey
    smart: SmartServer

    async def token(self) -> str:
        response = await token_request(
            self.smart, grant(self.key, self.smart, self.client_id, payer_scopes(self.org))
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    async def client(self) -> httpx.AsyncClient:
        return self.smart.client(await self.token())


async def register_payer(smart: SmartServer, org: str) -> Payer:
    await smart.seed({"resourceType": "Organization", "id": org, "name": f"{org} health plan",
                      "identifier": [{"system": "http://example.org/payer-ids", "value": org}]})  # fmt: skip
    key = jose.rsa_key()
    client_id = f"{org}-system"
    await smart.app.state.smart.clients.register(
        Client(client_id=client_id, scopes=payer_scopes(org), jwks=jose.public_jwks(key))
    )
    return Payer(org, client_id, key, smart)


@pytest.fixture
async def clinic(mongo_uri: str) -> AsyncIterator[SmartServer]:
    async with run_smart(mongo_uri) as server:
        await write_demo(server.service)
        yield server


async def clinician(smart: SmartServer) -> httpx.AsyncClient:
    token = await smart.mint("user/*.cruds", fhir_user="Practitioner/demo-therapist")
    return smart.client(token)


def members_group(org: str, *members: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "name": f"Members attributed to {org}",
        "managingEntity": {"reference": f"Organization/{org}"},
        "member": list(members),
    }


def by_mrn(mrn: str, **extra: Any) -> dict[str, Any]:
    return {"entity": {"identifier": {"system": MRN, "value": mrn}}, **extra}


def attachment_request(org: str, mrn: str, **overrides: Any) -> dict[str, Any]:
    """A CDex 2.1 attachment request (as the IG's Task example 20), naming the member by a
    contained Patient with the practice's record number."""
    task = {
        "resourceType": "Task",
        "meta": {"profile": [
            "http://hl7.org/fhir/us/davinci-cdex/StructureDefinition/cdex-task-attachment-request"]},
        "contained": [
            {"resourceType": "Patient", "id": "patient",
             "identifier": [{"system": MRN, "value": mrn}], "name": [{"family": "Member"}]},
            {"resourceType": "PractitionerRole", "id": "practitionerrole",
             "practitioner": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi",
                                             "value": "1234567893"}}},
        ],
        "identifier": [{
            "type": {"coding": [{"system": CDEX_TEMP, "code": "tracking-id"}]},
            "system": f"http://example.org/{org}", "value": f"tracking-{mrn}"}],
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": PAS_TEMP, "code": "attachment-request-code"}]},
        "for": {"reference": "#patient"},
        "authoredOn": "2026-10-31T09:00:00Z",
        "requester": {"reference": f"Organization/{org}",
                      "identifier": {"system": "http://example.org/payer-ids", "value": org}},
        "owner": {"reference": "#practitionerrole"},
        "reasonCode": {"coding": [{"system": "http://hl7.org/fhir/claim-use", "code": "claim"}],
                       "text": "claim"},
        "reasonReference": {"identifier": {"system": f"http://example.org/{org}/claims",
                                           "value": f"claim-{mrn}"}},
        "input": [
            {"type": {"coding": [{"system": PAS_TEMP, "code": "attachments-needed"}]},
             "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "11506-3",
                                                  "display": "Progress note"}]}},
            {"type": {"coding": [{"system": CDEX_TEMP, "code": "service-date"}]},
             "valueDate": "2026-08-01"},
            {"type": {"coding": [{"system": PAS_TEMP, "code": "payer-url"}]},
             "valueUrl": f"http://example.org/{org}/$submit-attachment"},
        ],
    }  # fmt: skip
    task.update(overrides)
    return task


def data_request(org: str, mrn: str, query: str) -> dict[str, Any]:
    """A CDex data request (as the IG's Task example 1): the member by identifier, a query."""
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": CDEX_TEMP, "code": "data-request-query"}]},
        "for": {"identifier": {"system": MRN, "value": mrn}},
        "authoredOn": "2026-10-31T09:00:00Z",
        "requester": {"reference": f"Organization/{org}"},
        "owner": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}},
        "reasonReference": {"identifier": {"system": f"http://example.org/{org}/claims",
                                           "value": f"claim-{mrn}"}},
        "input": [{"type": {"coding": [{"system": HREX_TEMP, "code": "data-query"}]},
                   "valueString": query}],
    }  # fmt: skip
