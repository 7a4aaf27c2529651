"""User-level writes to the EHR (exchange/user_tokens.py): two real servers over HTTP. Server A
plays the EHR and its authorization server (FHIRGOAL_AUTH=smart); fhirgoal B trusts A's tokens
(FHIRGOAL_AUTH=external) and has an EHR connection to A. A clinician's token issued by A names
both A and B as audience: what the clinician writes at B reaches A written by the clinician (A's
own Provenance and AuditEvent say so); what a rule derives from it goes as fhirgoal's Backend
Services client; an expired or refused user token falls back to the backend token, and B's
AuditEvent of the delivery says which and why. Deliveries are driven one at a time (no
background worker), so each one happens where the test puts it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fhirgoal.clinical.resources import gas_goal, gas_rating
from fhirgoal.exchange.delivery import DeliveryWorker
from fhirgoal.exchange.ehr_audit import DCM
from tests.auth.conftest import AUDIT_CLIENT
from tests.exchange.ehr_pair import CLIENT_ID, CONNECTION, Pair, ehr_pair, patient
from tests.exchange.test_ehr_cli import cli
from tests.helpers import store

SETTINGS = {"outbox_worker": False, "sync_pull_seconds": 0, "user_access": "all"}
LEVELS = ["much less", "less", "expected", "more", "much more"]
AUDIT_SCOPE = "system/AuditEvent.rs"  # asked for by name (never in a wildcard)


@dataclass
class Clinic:
    pair: Pair
    practitioner: str  # the clinician's fhirUser, as A's tokens carry it
    ehr_patient: str
    local_patient: str
    system: httpx.AsyncClient  # a backend client of B (a token of A's for B)

    async def user(
        self, lifetime: int | None = None, audiences: list[str] | None = None
    ) -> httpx.AsyncClient:
        """B's FHIR API with the clinician's token, issued by A for A and B."""
        ehr, fhirgoal = self.pair.ehr, self.pair.fhirgoal
        token = await ehr.mint(
            "openid fhirUser user/*.cruds",
            fhir_user=self.practitioner,
            sub="dr-lee",
            aud=audiences or [ehr.base, fhirgoal.base],
            lifetime=lifetime,
        )
        return httpx.AsyncClient(
            base_url=fhirgoal.base, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

    async def deliver(self) -> int:
        worker = DeliveryWorker(self.pair.service.outbox, self.pair.fhirgoal.settings)
        try:
            return await worker.run_once(self.pair.connection.dest)
        finally:
            await worker.stop()

    async def authors_in_ehr(self, ehr_ref: str) -> dict[str, dict[str, Any]]:
        """Per version of `ehr_ref` ("Goal/x/_history/1"), who A's Provenance says wrote it."""
        response = await self.pair.ehr_http.get("/Provenance", params={"target": ehr_ref})
        assert response.status_code == 200, response.text
        return {
            e["resource"]["target"][0]["reference"]: e["resource"]["agent"][0]["who"]
            for e in response.json().get("entry", [])
        }

    async def provenance_in_ehr(self, ehr_ref: str) -> list[dict[str, Any]]:
        """Who wrote each version of `ehr_ref` at A, by A's Provenances, oldest first."""
        authors = await self.authors_in_ehr(ehr_ref)
        return [authors[v] for v in sorted(authors, key=lambda v: int(v.rsplit("/", 1)[1]))]

    async def deliveries(self, local: str) -> list[dict[str, Any]]:
        """B's AuditEvents of the deliveries of the versions of `local` ("Goal/g1")."""
        ehr, fhirgoal = self.pair.ehr, self.pair.fhirgoal
        token = await ehr.mint(AUDIT_SCOPE, client_id=AUDIT_CLIENT, aud=fhirgoal.base)
        async with httpx.AsyncClient(
            base_url=fhirgoal.base, timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as auditor:
            response = await auditor.get(
                "/AuditEvent", params={"type": f"{DCM}|110106", "_count": "100"}
            )
        assert response.status_code == 200, response.text
        events = [e["resource"] for e in response.json().get("entry", [])]
        return [
            event
            for event in events
            if any(
                str(entity.get("what", {}).get("reference", "")).startswith(f"{local}/_history/")
                for entity in event.get("entity", [])
            )
        ]


@asynccontextmanager
async def clinic(
    mongo_uri: str, in_caseload: bool = True, **settings: Any
) -> AsyncIterator[Clinic]:
    """A patient known to A (in the clinician's caseload there, unless not `in_caseload`) and to
    B, linked by MRN."""
    async with ehr_pair(mongo_uri, external=True, **{**SETTINGS, **settings}) as pair:
        practitioner = await pair.ehr_create(
            {"resourceType": "Practitioner", "name": [{"family": "Lee", "given": ["Dana"]}]}
        )
        fhir_user = f"{pair.ehr.base}/Practitioner/{practitioner['id']}"
        extra = {}
        if in_caseload:
            extra["generalPractitioner"] = [{"reference": f"Practitioner/{practitioner['id']}"}]
        ehr_patient = await pair.ehr_create(patient("MRN-U", **extra))
        system_token = await pair.ehr.mint("system/*.cruds", aud=pair.fhirgoal.base)
        async with httpx.AsyncClient(
            base_url=pair.fhirgoal.base,
            timeout=30,
            headers={"Authorization": f"Bearer {system_token}"},
        ) as system:
            local = await system.post("/Patient", json=patient("MRN-U"))
            assert local.status_code == 201, local.text
            await pair.pull()
            link = await pair.links.by_local(CONNECTION, f"Patient/{local.json()['id']}")
            assert link is not None and link.ehr == f"Patient/{ehr_patient['id']}"
            yield Clinic(pair, fhir_user, ehr_patient["id"], local.json()["id"], system)


async def sync_status_cell(mongo_uri: str, c: Clinic, column: str) -> str:
    """The connection's `column` in `fhirgoal sync status` (the command, as a process)."""
    status = await asyncio.to_thread(cli, mongo_uri, c.pair.fhirgoal.settings.db, "sync", "status")
    assert status.returncode == 0, status.stderr
    lines = status.stderr.splitlines()
    header = next(line for line in lines if column in line)
    row = next(line for line in lines if f" {CONNECTION} " in line)
    cells = zip(header.split("┃"), row.split("│"), strict=True)
    return {name.strip(): value.strip() for name, value in cells}[column]


def the_backend_client(who: dict[str, Any]) -> bool:
    """A's Provenance names fhirgoal's Backend Services client (no user)."""
    return "reference" not in who and who.get("identifier", {}).get("value") == CLIENT_ID


async def _goal_in_ehr(c: Clinic, gid: str) -> str:
    [copy] = await c.pair.in_ehr("Goal", gid)
    return f"Goal/{copy['id']}"


async def test_a_clinicians_writes_reach_the_ehr_as_theirs_and_derived_ones_as_the_system(
    mongo_uri: str,
) -> None:
    async with clinic(mongo_uri) as c, await c.user() as clinician:
        goal = gas_goal("g1", c.local_patient, "Sleeps through the night", LEVELS, start="2026-09-01")  # fmt: skip
        await store(clinician, goal)
        assert await c.deliver() == 1
        ehr_goal = await _goal_in_ehr(c, "g1")
        # A's own record of the write names the clinician, not fhirgoal's client
        assert await c.provenance_in_ehr(ehr_goal) == [{"reference": c.practitioner}]

        rating = gas_rating(
            "r1", c.local_patient, "g1", 0, "2026-09-08", performer="Practitioner/t1"
        )
        await store(clinician, rating)
        # the goal status rule derived a new version of the goal from the rating: the server's
        # write, not the clinician's
        current = (await c.system.get("/Goal/g1")).json()
        assert current["meta"]["versionId"] == "2", current
        assert current.get("achievementStatus"), current
        await c.deliver()
        [ehr_rating] = await c.pair.in_ehr("Observation", "r1")
        assert await c.provenance_in_ehr(f"Observation/{ehr_rating['id']}") == [
            {"reference": c.practitioner}
        ]
        # (A, a fhirgoal too, derives versions of its own from the rating: its Device's)
        authors = await c.authors_in_ehr(ehr_goal)
        assert authors[f"{ehr_goal}/_history/1"] == {"reference": c.practitioner}

        # A's AuditEvent of the rating's create names the clinician as its requestor
        audit_token = await c.pair.ehr.mint(AUDIT_SCOPE, client_id=AUDIT_CLIENT)
        async with c.pair.ehr.client(audit_token) as auditor:
            events = await auditor.get(
                "/AuditEvent", params={"entity": f"Observation/{ehr_rating['id']}"}
            )
        assert events.status_code == 200, events.text
        [create] = [e["resource"] for e in events.json()["entry"] if e["resource"]["action"] == "C"]
        [requestor] = [a for a in create["agent"] if a["requestor"]]
        assert requestor["who"] == {"reference": c.practitioner}

        # B's AuditEvents of the deliveries: the clinician's, then the system's
        by_version = {
            entity["what"]["reference"]: event
            for event in await c.deliveries("Goal/g1")
            for entity in event["entity"]
            if entity["what"]["reference"].startswith("Goal/g1/")
        }
        as_user = by_version["Goal/g1/_history/1"]
        assert as_user["agent"][0] == {
            "who": {"reference": c.practitioner},
            "altId": "dr-lee",
            "requestor": True,
        }
        assert as_user["agent"][1]["who"]["reference"] == "Device/fhirgoal"
        assert as_user["agent"][1]["requestor"] is False
        as_system = by_version["Goal/g1/_history/2"]
        assert [a["who"].get("reference") for a in as_system["agent"]] == ["Device/fhirgoal"]
        assert "outcomeDesc" not in as_system
        # ... and the EHR's version it made was written by fhirgoal's backend client
        [made] = [e["what"]["reference"] for e in as_system["entity"] if "description" in e]
        made = "/".join(made.split("/")[-4:])
        assert made.startswith(f"{ehr_goal}/_history/") and made != f"{ehr_goal}/_history/1"
        assert the_backend_client(authors[made]), authors
        # `sync status` counts them; no user token is left in memory for delivered items
        assert await sync_status_cell(mongo_uri, c, "as users") == "2"
        assert await sync_status_cell(mongo_uri, c, "delivered") == "3"  # goal v1, v2, rating
        assert len(c.pair.sync.user_tokens) == 0


async def test_a_token_expired_before_delivery_is_not_used_and_the_audit_says_so(
    mongo_uri: str,
) -> None:
    async with (
        clinic(mongo_uri, ehr_user_token_margin_seconds=0) as c,
        await c.user(lifetime=3) as clinician,
    ):
        started = time.time()
        goal = gas_goal("g2", c.local_patient, "Walks daily", LEVELS, start="2026-09-01")
        await store(clinician, goal)
        await asyncio.sleep(max(0.0, started + 3.5 - time.time()))
        assert await c.deliver() == 1
        ehr_goal = await _goal_in_ehr(c, "g2")
        [who] = await c.provenance_in_ehr(ehr_goal)
        assert the_backend_client(who), who
        [event] = await c.deliveries("Goal/g2")
        assert event["outcome"] == "0"
        device, user = event["agent"]
        assert device["who"]["reference"] == "Device/fhirgoal" and device["requestor"] is True
        assert user == {"who": {"reference": c.practitioner}, "altId": "dr-lee", "requestor": False}
        assert "backend token" in event["outcomeDesc"] and "expired" in event["outcomeDesc"]
        report = await c.pair.sync.store.user_delivery_report(CONNECTION)
        assert report == {"sent": 0, "fell_back": 1}


@pytest.mark.parametrize("refusal", [401, 403])
async def test_a_token_the_ehr_refuses_falls_back_to_the_backend_token_once(
    mongo_uri: str, refusal: int
) -> None:
    # 401: A revoked the clinician's tokens after B accepted this one; 403: the patient is
    # outside the clinician's caseload at A (what B allows is not what A allows)
    async with (
        clinic(mongo_uri, in_caseload=refusal == 401) as c,
        await c.user() as clinician,
    ):
        goal = gas_goal("g3", c.local_patient, "Calls a friend weekly", LEVELS, start="2026-09-01")  # fmt: skip
        await store(clinician, goal)
        if refusal == 401:
            await c.pair.ehr.app.state.auth_runtime.revoke(["sub:dr-lee"])
        assert await c.deliver() == 1
        ehr_goal = await _goal_in_ehr(c, "g3")
        [who] = await c.provenance_in_ehr(ehr_goal)
        assert the_backend_client(who), who
        [event] = await c.deliveries("Goal/g3")
        assert event["outcome"] == "0"
        assert [a["requestor"] for a in event["agent"]] == [True, False]
        assert f"refused the user's token (HTTP {refusal})" in event["outcomeDesc"]
        assert len(c.pair.sync.user_tokens) == 0
        report = await c.pair.sync.store.user_delivery_report(CONNECTION)
        assert report == {"sent": 0, "fell_back": 1}


@pytest.mark.parametrize("why", ["not for the EHR", "off for the connection"])
async def test_a_token_the_ehr_would_not_accept_is_never_sent_there(
    mongo_uri: str, why: str
) -> None:
    async with clinic(mongo_uri) as c:
        audiences = [c.pair.fhirgoal.base] if why == "not for the EHR" else None
        if why == "off for the connection":
            await c.pair.sync.store.collection.update_one(
                {"_id": CONNECTION}, {"$set": {"user_tokens": False}}
            )
            await c.pair.sync.refresh()
        async with await c.user(audiences=audiences) as clinician:
            goal = gas_goal("g4", c.local_patient, "Reads nightly", LEVELS, start="2026-09-01")
            await store(clinician, goal)
        assert len(c.pair.sync.user_tokens) == 0  # nothing held for the item
        assert await c.deliver() == 1
        [who] = await c.provenance_in_ehr(await _goal_in_ehr(c, "g4"))
        assert the_backend_client(who), who
        [event] = await c.deliveries("Goal/g4")
        assert [a["who"].get("reference") for a in event["agent"]] == ["Device/fhirgoal"]
