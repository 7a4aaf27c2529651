"""A practitioner's `user/` access under FHIRGOAL_USER_ACCESS=caseload (issue 12, item 9): the
patient-scope matrix of test_patient_isolation.py, for a user whose caseload holds five patients
(by CareTeam, by role's CareTeam, by generalPractitioner as practitioner, role and organization)
and not patient B; nothing of B's comes back through any interaction or search feature, nothing
tells B's resources exist, and resources in no patient's compartment stay shared."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest

from fhirgoal.auth.bearer import CachedAuthenticator
from fhirgoal.auth.clients import Client
from fhirgoal.auth.revocation import token_keys
from fhirgoal.auth.state import create_launch
from fhirgoal.auth.tokens import InvalidToken
from fhirgoal.clinical.resources import gas_goal, gas_rating, rating_scale_response
from fhirgoal.core.access import Caseload
from tests.auth.conftest import SmartServer, run_smart
from tests.auth.flows import PASSWORD, REDIRECT, Browser, pkce, security_events
from tests.auth.isolation import (
    MARK,
    SEARCHES,
    assert_conditional_create_does_not_leak_b,
    assert_reads_of_b_are_404,
    assert_writes_to_b_change_nothing,
    b_records,
    ids,
    search_showing_nothing_of_b,
)
from tests.helpers import observation, wait_until

CASELOAD = {"p-team", "p-role", "p-gp", "p-gprole", "p-org"}
LEVELS = ["much less", "less", "expected", "more", "much more"]


def patient(pid: str, *gps: str) -> dict[str, object]:
    resource: dict[str, object] = {"resourceType": "Patient", "id": pid}
    resource["name"] = [{"family": pid.title()}]
    if gps:
        resource["generalPractitioner"] = [{"reference": gp} for gp in gps]
    return resource


def care_team(tid: str, pid: str, member: str, status: str = "active") -> dict[str, object]:
    return {
        "resourceType": "CareTeam",
        "id": tid,
        "status": status,
        "subject": {"reference": f"Patient/{pid}"},
        "participant": [{"member": {"reference": member}}],
    }


async def seed_world(smart: SmartServer) -> None:
    for resource in [
        {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Lee"}]},
        {"resourceType": "Practitioner", "id": "other", "name": [{"family": "Other"}]},
        {"resourceType": "Organization", "id": "clinic", "name": "Clinic"},
        {"resourceType": "Organization", "id": "old-clinic", "name": "Old clinic"},
        {"resourceType": "PractitionerRole", "id": "role-doc", "active": True,
         "practitioner": {"reference": "Practitioner/doc"},
         "organization": {"reference": "Organization/clinic"}},
        {"resourceType": "PractitionerRole", "id": "role-ended", "active": False,
         "practitioner": {"reference": "Practitioner/doc"},
         "organization": {"reference": "Organization/old-clinic"}},
        patient("p-team"),
        patient("p-role"),
        patient("p-gp", "Practitioner/doc"),
        patient("p-gprole", "PractitionerRole/role-doc"),
        patient("p-org", "Organization/clinic"),
        # B: cared for by someone else; doc's old team and old organization do not count
        patient("p-bbbb", "Practitioner/other", "Organization/old-clinic"),
        care_team("team-1", "p-team", "Practitioner/doc"),
        care_team("team-2", "p-role", "PractitionerRole/role-doc"),
        care_team("team-bbbb", "p-bbbb", "Practitioner/doc", status="inactive"),
        {"resourceType": "CareTeam", "id": "team-shared", "status": "active", "name": "On call",
         "participant": [{"member": {"reference": "Practitioner/other"}}]},
        *b_records("p-team"),
        gas_goal("p-team-g", "p-team", "Walk", LEVELS, start="2026-08-01"),
        gas_rating("p-team-r", "p-team", "p-team-g", -1, "2026-08-03", baseline=True,
                   performer="Practitioner/doc"),
        gas_goal("p-bbbb-g", "p-bbbb", "Walk", LEVELS, start="2026-08-01"),
        gas_rating("p-bbbb-r", "p-bbbb", "p-bbbb-g", -1, "2026-08-03", baseline=True,
                   performer="Practitioner/other"),
        rating_scale_response("p-bbbb-qr", "ors", "p-bbbb", [Decimal(5)] * 4, "2026-08-03"),
        {"resourceType": "Questionnaire", "id": "q-shared", "status": "active"},
    ]:  # fmt: skip
        await smart.seed(resource)


@dataclass
class World:
    smart: SmartServer
    lee: httpx.AsyncClient  # user/*.cruds as Practitioner/doc


@pytest.fixture
async def world(smart: SmartServer) -> AsyncIterator[World]:
    await seed_world(smart)
    async with smart.client(await smart.mint("user/*.cruds", fhir_user="Practitioner/doc")) as lee:
        yield World(smart, lee)


async def test_the_caseload_is_care_teams_and_general_practitioner(world: World) -> None:
    response = await world.lee.get("/Patient", params={"_count": 50})
    assert response.status_code == 200
    assert ids(response) == CASELOAD
    for pid in CASELOAD:
        assert (await world.lee.get(f"/Patient/{pid}")).status_code == 200, pid


async def test_the_caseload_is_computed_past_the_search_value_limit(mongo_uri: str) -> None:
    # the caseload's own searches name every role and organization of the practitioner: they
    # are not refused by FHIRGOAL_MAX_SEARCH_VALUES (3 members and 5 carers here, limit 2)
    async with run_smart(mongo_uri, max_search_values=2) as smart:
        for resource in [
            {"resourceType": "Practitioner", "id": "doc"},
            *[{"resourceType": "PractitionerRole", "id": f"role-{n}", "active": True,
               "practitioner": {"reference": "Practitioner/doc"},
               "organization": {"reference": f"Organization/clinic-{n}"}} for n in (1, 2)],
            patient("p-team"), patient("p-gp", "Practitioner/doc"),
            patient("p-org", "Organization/clinic-2"), patient("p-bbbb"),
            care_team("team-1", "p-team", "PractitionerRole/role-2"),
        ]:  # fmt: skip
            await smart.seed(resource)
        async with smart.client(await smart.mint("user/*.rs", fhir_user="Practitioner/doc")) as lee:
            response = await lee.get("/Patient", params={"_count": 50})
            assert response.status_code == 200, response.text
            assert ids(response) == {"p-team", "p-gp", "p-org"}


async def test_reads_of_b_answer_404_exactly_as_for_an_unknown_id(world: World) -> None:
    await assert_reads_of_b_are_404(world.lee, "CareTeam/team-bbbb", "Goal/p-bbbb-g")


@pytest.mark.parametrize(
    "path",
    [
        *SEARCHES,
        "/Observation?subject:Patient.name=P-Bbbb",
        "/Observation?subject:Patient.general-practitioner=Practitioner/other",
        "/Observation?patient=p-bbbb,p-team",
        "/Patient?_has:CareTeam:patient:participant=Practitioner/doc",
        "/Patient?general-practitioner=Practitioner/other",
        "/Patient?_revinclude=Goal:subject&_revinclude=Encounter:subject&_revinclude=CareTeam:subject",
        "/Practitioner?_revinclude=CareTeam:participant&_revinclude=Patient:general-practitioner",
        "/CareTeam",
        "/CareTeam?participant=Practitioner/doc",
        "/QuestionnaireResponse",
        "/Patient/p-bbbb/CareTeam",
        "/?_type=Observation,Goal,Encounter,Patient,CareTeam",
        "/Patient/_history",
    ],
)
async def test_searches_never_return_b(world: World, path: str) -> None:
    response = await search_showing_nothing_of_b(world.lee, path)
    if "_summary=count" in path:  # a count has no entries to look at: B's would be counted
        assert response.json()["total"] == 2  # obs-a and p-team-r


async def test_the_caseload_and_shared_resources_come_back_through_the_same_features(
    world: World,
) -> None:
    lee = world.lee
    assert ids(await lee.get("/Observation")) == {"obs-a", "p-team-r"}
    assert (await lee.get("/Observation?_summary=count")).json()["total"] == 2
    assert ids(await lee.get("/CareTeam")) == {"team-1", "team-2", "team-shared"}
    included = await lee.get("/Patient?_id=p-team&_revinclude=Observation:subject")
    assert ids(included) == {"p-team", "obs-a", "p-team-r"}
    chained = await lee.get("/Observation?subject:Patient.name=P-Team")
    assert ids(chained) == {"obs-a", "p-team-r"}
    has = await lee.get("/Patient?_has:CareTeam:patient:participant=Practitioner/doc")
    assert ids(has) == {"p-team"}
    assert ids(await lee.get("/Patient/p-team/Observation")) == {"obs-a", "p-team-r"}
    history = await lee.get("/_history", params={"_count": 100})
    assert all(MARK not in i for i in ids(history)) and {"p-team", "obs-a"} <= ids(history)
    # shared: types outside the patient compartment, and resources about no patient
    for path in ("/Practitioner/other", "/Organization/old-clinic", "/Questionnaire/q-shared",
                 "/CareTeam/team-shared", "/PractitionerRole/role-ended"):  # fmt: skip
        assert (await lee.get(path)).status_code == 200, path
    assert ids(await lee.get("/Practitioner")) == {"doc", "other"}


async def test_operations_on_b_answer_404_as_for_nobody(world: World) -> None:
    lee = world.lee
    assert (await lee.get("/Patient/p-team/$progress")).status_code == 200
    tscore = await lee.get("/Patient/p-team/$gas-tscore", params={"date": "2026-09-01"})
    assert tscore.status_code == 200, tscore.text
    for path in ("/Patient/{}/$progress", "/Patient/{}/$gas-tscore",
                 "/QuestionnaireResponse/{}-qr/$extract", "/Patient/{}/$everything"):  # fmt: skip
        seen = await lee.get(path.format("p-bbbb"))
        unknown = await lee.get(path.format("nobody"))
        assert seen.status_code == unknown.status_code, (path, seen.text, unknown.text)
        assert seen.text.replace("p-bbbb", "nobody") == unknown.text, path


async def test_writes_to_b_answer_404_and_change_nothing(world: World) -> None:
    await assert_writes_to_b_change_nothing(world.smart, world.lee, "p-team")


async def test_writing_into_a_patient_outside_the_caseload_is_403(world: World) -> None:
    lee = world.lee
    assert (await lee.post("/Observation", json=observation("p-bbbb"))).status_code == 403
    # a second reference into B's compartment is refused too
    both = observation("p-team", performer=[{"reference": "Patient/p-bbbb"}])
    assert (await lee.post("/Observation", json=both)).status_code == 403
    moved = observation("p-bbbb", id="obs-a")
    assert (await lee.put("/Observation/obs-a", json=moved)).status_code == 403
    # nor can the user put B in their own caseload through a CareTeam or a Patient
    team = care_team("team-new", "p-bbbb", "Practitioner/doc")
    del team["id"]
    assert (await lee.post("/CareTeam", json=team)).status_code == 403
    adopted = patient("p-bbbb", "Practitioner/doc")
    assert (await lee.put("/Patient/p-bbbb", json=adopted)).status_code in (403, 404)
    own = (await lee.get("/Observation/obs-a")).json()
    assert own["subject"]["reference"] == "Patient/p-team"
    # what is in the caseload, or in no patient's compartment, may be written
    assert (await lee.post("/Observation", json=observation("p-gp"))).status_code == 201
    shared = {"resourceType": "Questionnaire", "status": "draft"}
    assert (await lee.post("/Questionnaire", json=shared)).status_code == 201
    # a new patient the user registers as their own
    new = patient("p-new", "PractitionerRole/role-doc")
    del new["id"]
    assert (await lee.post("/Patient", json=new)).status_code == 201
    stranger = patient("p-x", "Practitioner/other")
    del stranger["id"]
    assert (await lee.post("/Patient", json=stranger)).status_code == 403


async def test_conditional_interactions_do_not_leak_b(world: World) -> None:
    await assert_conditional_create_does_not_leak_b(world.smart, world.lee, "p-team")


async def test_a_user_without_a_practitioner_reaches_no_patient(world: World) -> None:
    async with world.smart.client(await world.smart.mint("user/*.rs")) as nobody:
        assert ids(await nobody.get("/Patient")) == set()
        assert ids(await nobody.get("/Observation")) == set()
        assert (await nobody.get("/Questionnaire/q-shared")).status_code == 200


async def test_a_launch_patient_outside_the_caseload_opens_nothing(world: World) -> None:
    """An EHR launch or picker choice for B (a token with `patient=p-bbbb`) gives the
    practitioner's patient scopes nothing; within the caseload they work as before."""
    smart = world.smart
    token = await smart.mint("patient/*.rs", patient="p-bbbb", fhir_user="Practitioner/doc")
    async with smart.client(token) as launched:
        assert (await launched.get("/Patient/p-bbbb")).status_code == 404
        assert ids(await launched.get("/Observation")) == set()
    token = await smart.mint("patient/*.rs", patient="p-team", fhir_user="Practitioner/doc")
    async with smart.client(token) as launched:
        assert ids(await launched.get("/Observation")) == {"obs-a", "p-team-r"}


async def test_a_caseload_change_reaches_tokens_within_the_refresh_time(
    mongo_uri: str,
) -> None:
    async with run_smart(mongo_uri, caseload_refresh_seconds=0.5) as smart:
        await seed_world(smart)
        async with smart.client(await smart.mint("user/*.rs", fhir_user="Practitioner/doc")) as lee:
            assert (await lee.get("/Patient/p-team")).status_code == 200
            await smart.seed(care_team("team-1", "p-team", "Practitioner/other"))
            await smart.seed(care_team("team-3", "p-bbbb", "Practitioner/doc"))

            async def moved_off_the_caseload() -> bool:
                return (await lee.get("/Patient/p-team")).status_code == 404

            # the first use after the refresh time rebuilds the caseload: polled, within a few
            await wait_until(moved_off_the_caseload, within=10, what="the caseload refreshed")
            assert (await lee.get("/Patient/p-bbbb")).status_code == 200


async def test_policy_all_reaches_every_patient(mongo_uri: str) -> None:
    async with run_smart(mongo_uri, user_access="all") as smart:
        await seed_world(smart)
        async with smart.client(await smart.mint("user/*.rs", fhir_user="Practitioner/doc")) as lee:
            everyone = await lee.get("/Patient", params={"_count": 50})
            assert ids(everyone) == CASELOAD | {"p-bbbb"}
            assert (await lee.get("/Observation/obs-bbbb")).status_code == 200
            assert (await lee.get("/Patient/p-bbbb/$progress")).status_code == 200


# ---- the login's patient picker and the launch ---------------------------------------------------
PICKER_SCOPES = "launch launch/patient openid fhirUser patient/*.rs user/*.rs"
PICK_A_PATIENT = "launch/patient openid fhirUser patient/*.rs"
EHR_LAUNCH = "launch openid fhirUser patient/*.rs"


async def consent_page(
    browser: Browser, user: str, scope: str = PICK_A_PATIENT, **extra: str
) -> str:
    _, challenge = pkce()
    return await browser.consent_page(scope, challenge, user=user, **extra)


@pytest.fixture
async def browser(world: World) -> AsyncIterator[Browser]:
    """lee's (or newbie's) browser for the app `webapp`, in the world of the caseload."""
    smart = world.smart
    await smart.app.state.smart.clients.register(
        Client(client_id="webapp", scopes=PICKER_SCOPES, redirect_uris=[REDIRECT])
    )
    await smart.app.state.smart.users.add("lee", PASSWORD, "Practitioner/doc", PICKER_SCOPES)
    await smart.app.state.smart.users.add("newbie", PASSWORD, "Practitioner/newbie", PICKER_SCOPES)
    async with httpx.AsyncClient(base_url=smart.origin, timeout=30) as http:
        yield Browser(smart, http)


async def test_the_picker_offers_the_caseload_only(world: World, browser: Browser) -> None:
    consent = await consent_page(browser, "lee")
    offered = set(re.findall(r'<option value="([^"]+)"', consent))
    assert offered == CASELOAD
    # a choice outside the caseload, sent by hand, is refused
    refused = await browser.decide(consent, "p-bbbb")
    assert refused["error"] == ["invalid_request"] and "code" not in refused
    [audited] = await security_events(world.smart, "launch-refused")
    assert audited["outcome"] == "4" and "Patient/p-bbbb" in audited["outcomeDesc"]
    consent = await consent_page(browser, "lee")
    assert "code" in await browser.decide(consent, "p-gp")


async def test_the_picker_says_when_the_caseload_is_empty(browser: Browser) -> None:
    consent = await consent_page(browser, "newbie")
    assert "<option" not in consent
    assert "No patients are in your caseload" in consent


async def test_an_ehr_launch_outside_the_caseload_is_refused(
    world: World, browser: Browser
) -> None:
    db = world.smart.app.state.smart.db
    outside = await create_launch(db, patient="p-bbbb")
    consent = await consent_page(browser, "lee", EHR_LAUNCH, launch=outside)
    refused = await browser.decide(consent)
    assert refused["error"] == ["access_denied"] and "code" not in refused
    [audited] = await security_events(world.smart, "launch-refused")
    assert "EHR launch's Patient/p-bbbb" in audited["outcomeDesc"]
    inside = await create_launch(db, patient="p-team")
    consent = await consent_page(browser, "lee", EHR_LAUNCH, launch=inside)
    assert "code" in await browser.decide(consent)


# ---- the token cache: caseload refresh and revocation together ----------------------------------
async def test_a_rebuilt_caseload_context_is_still_revocable(mongo_uri: str) -> None:
    # revocations made elsewhere are not reread during the test: only this replica's eviction
    async with run_smart(
        mongo_uri, caseload_refresh_seconds=0.3, revocation_check_seconds=3600
    ) as smart:
        await seed_world(smart)
        token = await smart.mint("user/*.rs", fhir_user="Practitioner/doc", grant_id="g-lee")
        async with smart.client(token) as lee:
            assert (await lee.get("/Patient/p-team")).status_code == 200
            # The subject is the passing of the 0.3 s refresh time itself (no event to wait on):
            # the caseload is then stale, and the next use rebuilds the context.
            await asyncio.sleep(0.4)
            assert (await lee.get("/Patient/p-team")).status_code == 200
            await smart.app.state.auth_runtime.revoke(["grant:g-lee"])
            assert (await lee.get("/Patient/p-team")).status_code == 401


class _RevokedMeanwhile:
    """Caseloads whose computation sees a revocation land (another request's code reuse)."""

    patient_types = frozenset({"Patient"})

    def __init__(self) -> None:
        self.authenticator: CachedAuthenticator | None = None
        self.revoke = False

    async def of(self, fhir_user: str | None) -> Caseload:
        if self.revoke and self.authenticator is not None:
            self.authenticator.evict({"grant:g-1"})
        return Caseload(frozenset({"Patient/p-team"}), time.monotonic() - 1)  # stale at once


async def test_a_revocation_during_a_caseload_build_refuses_the_token() -> None:
    claims = {"scope": "user/*.rs", "fhirUser": "Practitioner/doc", "sub": "lee",
              "client_id": "app", "grant_id": "g-1", "exp": time.time() + 60}  # fmt: skip
    verified = 0

    async def verify(token: str, base: str) -> dict[str, object]:
        nonlocal verified
        verified += 1
        return dict(claims)

    caseloads = _RevokedMeanwhile()
    cache = CachedAuthenticator(verify, None, keys_of=token_keys, caseloads=caseloads)  # type: ignore[arg-type]
    caseloads.authenticator = cache
    assert (await cache.authenticate("t", "b")).caseload is not None
    caseloads.revoke = True  # revoked while the stale context is rebuilt: refused, not cached
    with pytest.raises(InvalidToken):
        await cache.authenticate("t", "b")
    with pytest.raises(InvalidToken):  # revoked while a first verification builds it
        await cache.authenticate("t2", "b")
    assert verified == 2 and cache.evict({"grant:g-1"}) == 0
