"""Push in (exchange/ehr_subscribe.py, ehr_push.py) between two real fhirgoal servers: the EHR
(SMART on, a topic-based Subscriptions notifier) and fhirgoal, its Backend Services client, with
pulls off. fhirgoal subscribes at the EHR; the EHR's notifications reach
`POST /sync/notify/<connection>` and what they name is applied as a pull would apply it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import httpx

from fhirgoal.core.jsonio import dumps
from fhirgoal.exchange.connections import DEFAULT_SCOPES, SUBSCRIPTION_SCOPE
from fhirgoal.exchange.ehr_push_store import PUSH, PUSH_EVENTS
from fhirgoal.exchange.ehr_subscribe import PATIENTS_PER_FILTER, choose_topics, filters_for
from fhirgoal.exchange.notifications import STATUS_PROFILE
from fhirgoal.exchange.push_notifications import NotificationError, read_notification
from fhirgoal.exchange.subscription_rules import FILTER_CRITERIA, PAYLOAD_CONTENT
from fhirgoal.exchange.topics import load_topics
from fhirgoal.store.outbox import OUTBOX
from tests.auth.conftest import TEST_KEK, run_smart
from tests.conftest import fresh_settings, running
from tests.exchange.ehr_pair import (
    CLIENT_ID,
    CONNECTION,
    MRN,
    Pair,
    ehr_pair,
    patient,
    register_fhirgoal,
)
from tests.exchange.ehr_proxy import proxy
from tests.exchange.test_ehr_cli import cli
from tests.helpers import FHIR_JSON, create, wait_until

GOAL_TOPIC = "https://fhirgoal.org/fhir/SubscriptionTopic/goal-change"
ENCOUNTER_TOPIC = "https://fhirgoal.org/fhir/SubscriptionTopic/encounter"
PUSH_ONLY = {"sync_pull_seconds": 0, "sync_push_heartbeat_seconds": 1}


def goal(pid: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": text},
        "subject": {"reference": f"Patient/{pid}"},
    }


async def _followed_with_goal(pair: Pair, mrn: str = "MRN-1") -> dict[str, Any]:
    """A patient on both sides, a goal in the EHR, fhirgoal subscribed and the first pull done."""
    ehr_patient = await pair.ehr_create(patient(mrn))
    local = await create(pair.fhirgoal.client, patient(mrn))
    made = await pair.ehr_create(goal(ehr_patient["id"], "Sleep through the night"))
    report = await pair.subscribe()
    assert report.linked == 1 and report.fresh_patients
    assert report.covered == {"Goal": GOAL_TOPIC, "Encounter": ENCOUNTER_TOPIC}
    assert report.uncovered == ["Patient", "Condition", "CarePlan"]
    await pair.pull()  # the followed patient's records, whole
    assert len(await pair.in_fhirgoal("Goal", made["id"])) == 1
    return {"patient": ehr_patient, "local": local, "goal": made}


async def _ehr_subscriptions(pair: Pair) -> list[dict[str, Any]]:
    response = await pair.ehr_http.get("/Subscription")
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]


async def _all_active(pair: Pair) -> bool:
    subs = await _ehr_subscriptions(pair)
    return bool(subs) and all(s["status"] == "active" for s in subs)


async def _secret(pair: Pair) -> str:
    """The secret the EHR sends (the test plays the EHR): from its Subscription's header."""
    [sub, *_] = await _ehr_subscriptions(pair)
    [header] = sub["channel"]["header"]
    name, _, value = header.partition(": ")
    assert name == "Authorization" and value.startswith("Bearer ")
    return value.removeprefix("Bearer ")


def _notification(
    pair: Pair,
    sid: str,
    kind: str,
    since: int,
    foci: list[str] = (),  # type: ignore[assignment]
    numbers: list[int] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    base = pair.connection.base
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{sid}"}},
        {"name": "topic", "valueCanonical": GOAL_TOPIC},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    for number, focus in zip(numbers, foci, strict=True):
        parameters.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "focus", "valueReference": {"reference": f"{base}/{focus}"}},
                ],
            }
        )
    status = {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}}
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "fullUrl": "urn:uuid:5d6f0e9c-1f0b-4c57-8d07-9a3b1c2d4e5f",
                "resource": {**status, "parameter": parameters},
                "request": {"method": "GET", "url": f"{base}/Subscription/{sid}/$status"},
                "response": {"status": "200"},
            }
        ],
    }


async def _notify(
    pair: Pair, body: Any, secret: str | None, connection: str = CONNECTION
) -> httpx.Response:
    headers = dict(FHIR_JSON)
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    origin = pair.fhirgoal.base.removesuffix("/fhir")
    content = body if isinstance(body, bytes) else dumps(body)
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(
            f"{origin}/sync/notify/{connection}", content=content, headers=headers
        )


async def _goal_sid(pair: Pair) -> str:
    state = await pair.push.store.state(CONNECTION)
    [sid] = [s.id for s in state.subscriptions if s.topic == GOAL_TOPIC]
    return sid


async def test_an_ehr_edit_is_pushed_to_fhirgoal_within_seconds_with_pulls_off(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, subscribe=True, **PUSH_ONLY) as pair:
        made = await _followed_with_goal(pair)
        ehr_pid = made["patient"]["id"]

        # the EHR's Subscriptions: one per topic, filtered to the followed patient, id-only,
        # with the secret as a channel header; fhirgoal keeps only the secret's hash
        subs = {s["criteria"]: s for s in await _ehr_subscriptions(pair)}
        assert set(subs) == {GOAL_TOPIC, ENCOUNTER_TOPIC}
        goal_sub = subs[GOAL_TOPIC]
        assert goal_sub["_criteria"]["extension"] == [
            {"url": FILTER_CRITERIA, "valueString": f"Goal?patient=Patient/{ehr_pid}"}
        ]
        assert goal_sub["channel"]["endpoint"] == (
            f"{pair.fhirgoal.base.removesuffix('/fhir')}/sync/notify/{CONNECTION}"
        )
        assert goal_sub["channel"]["_payload"]["extension"] == [
            {"url": PAYLOAD_CONTENT, "valueCode": "id-only"}
        ]
        secret = await _secret(pair)
        kept = await pair.service.database[PUSH].find_one({"_id": CONNECTION})
        assert kept is not None and secret not in repr(kept)
        # the handshake made them active
        await wait_until(lambda: _all_active(pair), within=20, what="the handshakes")

        # an edit in the EHR arrives in fhirgoal, with no pull
        last_pull = (await pair.sync.store.pull_report(CONNECTION))["last_pull"]
        edited = {**made["goal"], "description": {"text": "Sleep through the night, 5 nights"}}
        response = await pair.ehr_http.put(f"/Goal/{made['goal']['id']}", json=edited)
        assert response.status_code == 200, response.text

        async def arrived() -> bool:
            [copy] = await pair.in_fhirgoal("Goal", made["goal"]["id"])
            return bool(copy["description"]["text"] == "Sleep through the night, 5 nights")

        await wait_until(arrived, within=15, what="the EHR's edit in fhirgoal, pushed")
        assert (await pair.sync.store.pull_report(CONNECTION))["last_pull"] == last_pull
        await wait_until(
            lambda: pair.push.receiver.heard["event-notification"] >= 1,
            within=5,
            what="the notification's answer",  # counted just after its writes are visible
        )

        # a goal made in the EHR for the followed patient arrives too (a create)
        second = await pair.ehr_create(goal(ehr_pid, "Walk every morning"))

        async def created() -> bool:
            return len(await pair.in_fhirgoal("Goal", second["id"])) == 1

        await wait_until(created, within=15, what="the EHR's new goal in fhirgoal, pushed")

        # nothing went back to the EHR as an echo: no outbox item for the connection, the
        # EHR's goal has its own two versions only
        items = await pair.service.database[OUTBOX].count_documents({"dest": pair.connection.dest})
        assert items == 0
        assert await pair.ehr_history("Goal", made["goal"]["id"]) == 2

        # heartbeats (every second here) are heard and ask for no pull
        heartbeats = pair.push.receiver.heard["heartbeat"]
        await wait_until(
            lambda: pair.push.receiver.heard["heartbeat"] > heartbeats,
            within=20,
            what="a heartbeat from the EHR",
        )
        assert (await pair.push.store.state(CONNECTION)).pull_due is None

        # subscribing again changes nothing at the EHR (same Subscriptions, same secret)
        again = await pair.subscribe()
        assert all(a.startswith("unchanged") for a in again.actions)
        assert await _secret(pair) == secret

        # a Subscription the EHR lost is made again, with a new secret for both; the old one
        # is still accepted a while (notifications in flight), the new one too
        gone = await pair.ehr_http.delete(f"/Subscription/{goal_sub['id']}")
        assert gone.status_code in (200, 204), gone.text
        remade = await pair.subscribe()
        assert any(a.startswith("created") and GOAL_TOPIC in a for a in remade.actions)
        assert any(a.startswith("updated") and ENCOUNTER_TOPIC in a for a in remade.actions)
        fresh = await _secret(pair)
        assert fresh != secret
        state = await pair.push.store.state(CONNECTION)
        assert state.accepts(fresh) and state.accepts(secret) and not state.accepts("guess")
        await wait_until(lambda: _all_active(pair), within=20, what="the new handshake")
        response = await pair.ehr_http.put(
            f"/Goal/{second['id']}", json={**second, "description": {"text": "Walk daily"}}
        )
        assert response.status_code == 200, response.text

        async def walked() -> bool:
            [copy] = await pair.in_fhirgoal("Goal", second["id"])
            return bool(copy["description"]["text"] == "Walk daily")

        await wait_until(walked, within=15, what="an edit through the Subscription made again")


async def test_a_wrong_secret_is_refused_audited_and_changes_nothing(mongo_uri: str) -> None:
    async with ehr_pair(mongo_uri, subscribe=True, **PUSH_ONLY) as pair:
        made = await _followed_with_goal(pair)
        sid = await _goal_sid(pair)
        gid = made["goal"]["id"]
        await wait_until(lambda: _all_active(pair), within=20, what="the handshakes")
        [before] = await pair.in_fhirgoal("Goal", gid)
        # changed in the EHR behind fhirgoal's back (straight into its database: no
        # notification), then "notified" by someone without the secret
        ehr_goals = pair.ehr.app.state.fhir.database["Goal"]
        await ehr_goals.update_one({"_id": gid}, {"$set": {"marker": 1}})
        seen = await pair.push.store.seen(CONNECTION, sid)
        body = _notification(pair, sid, "event-notification", seen + 1, [f"Goal/{gid}"], [seen + 1])

        missing = await _notify(pair, body, None)
        assert missing.status_code == 401, missing.text
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["resourceType"] == "OperationOutcome"
        wrong = await _notify(pair, body, "not-the-secret")
        assert wrong.status_code == 403, wrong.text
        assert wrong.json()["issue"][0]["code"] == "forbidden"
        # the same answer for a connection that does not exist (no oracle for names)
        secret = await _secret(pair)
        unknown = await _notify(pair, body, secret, connection="elsewhere")
        assert unknown.status_code == 403, unknown.text

        [after] = await pair.in_fhirgoal("Goal", gid)
        assert after["meta"]["versionId"] == before["meta"]["versionId"]
        assert await pair.push.store.seen(CONNECTION, sid) == seen

        async def audited() -> bool:
            response = await pair.fhirgoal.client.get(
                "/AuditEvent",
                params={"type": "http://dicom.nema.org/resources/ontology/DCM|110113"},
            )
            assert response.status_code == 200, response.text
            found = [e["resource"] for e in response.json().get("entry", [])]
            return len(found) >= 3 and all(e["outcome"] == "4" for e in found)

        await wait_until(audited, within=20, what="the refusals as AuditEvents")

        # with the secret but a body that is no notification: 400, nothing changes
        for junk in (
            b"{not json",
            {"resourceType": "Bundle", "type": "searchset", "entry": []},
            {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {}}]},
            _notification(pair, sid, "gossip", 1),
        ):
            bad = await _notify(pair, junk, secret)
            assert bad.status_code == 400, bad.text
            assert bad.json()["resourceType"] == "OperationOutcome"
        too_big = await _notify(pair, b"[" + b" " * (1024 * 1024 + 10) + b"]", secret)
        assert too_big.status_code == 413, too_big.text
        [still] = await pair.in_fhirgoal("Goal", gid)
        assert still["meta"]["versionId"] == before["meta"]["versionId"]
        assert (await pair.push.store.state(CONNECTION)).pull_due is None


async def test_a_gap_in_the_event_numbers_triggers_a_pull(mongo_uri: str) -> None:
    async with ehr_pair(mongo_uri, subscribe=True, **PUSH_ONLY) as pair:
        made = await _followed_with_goal(pair)
        sid = await _goal_sid(pair)
        await wait_until(lambda: _all_active(pair), within=20, what="the handshakes")
        # a change no topic covers (a Condition) is only ever pulled
        condition = await pair.ehr_create(
            {
                "resourceType": "Condition",
                "code": {"text": "Insomnia"},
                "subject": {"reference": f"Patient/{made['patient']['id']}"},
            }
        )
        assert not await pair.in_fhirgoal("Condition", condition["id"])
        last_pull = (await pair.sync.store.pull_report(CONNECTION))["last_pull"]
        # the EHR's heartbeat counts three events more than fhirgoal heard: some were lost
        seen = await pair.push.store.seen(CONNECTION, sid)
        response = await _notify(
            pair, _notification(pair, sid, "heartbeat", seen + 3), await _secret(pair)
        )
        assert response.status_code == 200, response.text
        assert "a pull is queued" in response.json()["issue"][0]["diagnostics"]

        async def pulled() -> bool:
            return len(await pair.in_fhirgoal("Condition", condition["id"])) == 1

        await wait_until(pulled, within=20, what="the pull the gap asked for")
        await wait_until(
            lambda: _no_pull_due(pair), within=10, what="the asked-for pull marked done"
        )
        assert (await pair.sync.store.pull_report(CONNECTION))["last_pull"] != last_pull
        assert await pair.push.store.seen(CONNECTION, sid) == seen + 3

        # an event number that skips one asks for a pull too
        response = await _notify(
            pair,
            _notification(
                pair,
                sid,
                "event-notification",
                seen + 5,
                [f"Goal/{made['goal']['id']}"],
                [seen + 5],
            ),
            await _secret(pair),
        )
        assert response.status_code == 200, response.text
        said = response.json()["issue"][0]["diagnostics"]
        assert f"event {seen + 5} arrived after event {seen + 3}: 1 not heard" in said


async def _no_pull_due(pair: Pair) -> bool:
    return (await pair.push.store.state(CONNECTION)).pull_due is None


async def test_a_notification_about_a_patient_not_followed_is_ignored(mongo_uri: str) -> None:
    async with ehr_pair(mongo_uri, subscribe=True, **PUSH_ONLY) as pair:
        made = await _followed_with_goal(pair)
        sid = await _goal_sid(pair)
        stranger = await pair.ehr_create(patient("MRN-77", family="Okafor"))
        theirs = await pair.ehr_create(goal(stranger["id"], "Not fhirgoal's client"))
        seen = await pair.push.store.seen(CONNECTION, sid)
        body = _notification(
            pair, sid, "event-notification", seen + 1, [f"Goal/{theirs['id']}"], [seen + 1]
        )
        response = await _notify(pair, body, await _secret(pair))
        assert response.status_code == 200, response.text
        assert "1 ignored" in response.json()["issue"][0]["diagnostics"]
        assert not await pair.in_fhirgoal("Goal", theirs["id"])
        assert not await pair.in_fhirgoal("Patient", stranger["id"])
        assert await pair.links.held(CONNECTION) == []
        assert await pair.push.store.seen(CONNECTION, sid) == seen + 1
        events = await pair.service.database[PUSH_EVENTS].count_documents({"conn": CONNECTION})
        assert events >= 1

        # a followed patient's goal deleted in the EHR: the notification's focus is gone there,
        # so a pull is asked for, and it applies the deletion (exchange/ehr_deletions.py)
        await wait_until(lambda: _all_active(pair), within=20, what="the handshakes")
        deleted = await pair.ehr_http.delete(f"/Goal/{made['goal']['id']}")
        assert deleted.status_code in (200, 204), deleted.text

        async def gone() -> bool:
            return not await pair.in_fhirgoal("Goal", made["goal"]["id"])

        await wait_until(gone, within=20, what="the EHR's deletion, through a pull it asked for")


async def test_ehr_subscribe_commands(mongo_uri: str) -> None:
    settings = fresh_settings(
        mongo_uri, prefix="fg", sync_pull_seconds=0, key_encryption_key=TEST_KEK
    )
    async with run_smart(mongo_uri) as ehr, running(settings) as fhirgoal:
        db = fhirgoal.settings.db

        async def run(*args: str) -> subprocess.CompletedProcess[str]:
            # the commands run with the server's settings: its public address included
            return await asyncio.to_thread(
                cli, mongo_uri, db, *args, env={"FHIRGOAL_BASE_URL": fhirgoal.base}
            )

        added = await run(
            "ehr", "add", "--name", "clinic", "--base", ehr.base, "--client-id", CLIENT_ID,
            "--patient-system", MRN, "--subscribe",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        jwks = json.loads(added.stdout[: added.stdout.rindex("}") + 1])
        listed = await run("ehr", "list")
        assert "subscribes" in listed.stdout and SUBSCRIPTION_SCOPE in listed.stdout
        await register_fhirgoal(ehr, jwks, f"{DEFAULT_SCOPES} {SUBSCRIPTION_SCOPE}")
        await create(fhirgoal.client, patient("MRN-1"))
        async with await ehr.as_scope("system/*.cruds") as ehr_http:
            response = await ehr_http.post("/Patient", json=patient("MRN-1"))
            assert response.status_code == 201, response.text

            subscribed = await run("ehr", "subscribe", "clinic")
            assert subscribed.returncode == 0, subscribed.stderr
            out = " ".join((subscribed.stdout + subscribed.stderr).split())
            assert f"Goal pushed by topic {GOAL_TOPIC}" in out
            assert "no topic of the EHR covers Patient, Condition, CarePlan" in out
            assert (
                f"notifications to {fhirgoal.base.removesuffix('/fhir')}/sync/notify/clinic" in out
            )
            assert out.count("clinic: created Subscription/") == 2

            async def active() -> bool:
                found = (await ehr_http.get("/Subscription")).json().get("entry", [])
                return len(found) == 2 and all(e["resource"]["status"] == "active" for e in found)

            # the running server hears the handshakes of a connection the CLI marked
            await wait_until(active, within=30, what="the handshakes heard by the server")
            ran = await run("sync", "run", "--ehr", "clinic")
            assert ran.returncode == 0, ran.stderr
            assert (
                " ".join((ran.stdout + ran.stderr).split()).count("clinic: unchanged Subscription/")
                == 2
            )

            status = await run("sync", "status")
            assert status.returncode == 0, status.stderr
            said = " ".join(status.stderr.split())
            assert "clinic: pushed by the EHR through Subscription/" in said, said

            off = await run("ehr", "subscribe", "clinic", "--off")
            assert off.returncode == 0, off.stderr
            assert (await ehr_http.get("/Subscription")).json().get("total", 0) == 0
            listed = await run("ehr", "list")
            assert "pulls only" in listed.stdout
        unknown = await run("ehr", "subscribe", "nowhere")
        assert unknown.returncode != 0 and "no EHR connection nowhere" in unknown.stderr


def test_a_notification_is_read_from_the_backport_shape() -> None:
    base = "https://ehr.example/fhir"
    sent = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "resource": {
                    "resourceType": "Parameters",
                    "parameter": [
                        {
                            "name": "subscription",
                            "valueReference": {
                                "reference": "https://inside:8080/r4/Subscription/s1"
                            },
                        },
                        {"name": "status", "valueCode": "error"},
                        {"name": "type", "valueCode": "event-notification"},
                        {"name": "events-since-subscription-start", "valueString": "7"},
                        {
                            "name": "notification-event",
                            "part": [
                                {"name": "event-number", "valueString": "7"},
                                {
                                    "name": "focus",
                                    "valueReference": {
                                        "reference": "https://inside:8080/r4/Goal/g1/_history/2"
                                    },
                                },
                            ],
                        },
                        {"name": "error", "valueCodeableConcept": {"text": "timeouts"}},
                    ],
                }
            },
            {"fullUrl": f"{base}/Goal/g1"},
            {"fullUrl": "https://elsewhere.example/fhir/Goal/x"},
        ],
    }
    read = read_notification(sent, base)
    assert read.subscription == "s1" and read.kind == "event-notification"
    assert read.numbers == (7,) and read.events_since_start == 7
    assert read.foci == (("Goal", "g1"),)
    assert read.lost_something and read.error == "timeouts"
    # the foci named only in the entries (an EHR that leaves them out of the status)
    parts = sent["entry"][0]["resource"]["parameter"]  # type: ignore[index]
    parts[4] = {
        "name": "notification-event",
        "part": [{"name": "event-number", "valueString": "8"}],
    }
    assert read_notification(sent, base).foci == (("Goal", "g1"),)


def test_what_is_not_a_notification_is_a_400() -> None:
    base = "https://ehr.example/fhir"

    def status(*parameters: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "history",
            "entry": [{"resource": {"resourceType": "Parameters", "parameter": list(parameters)}}],
        }

    subscription = {"name": "subscription", "valueReference": {"reference": "Subscription/s"}}
    for body, said in [
        ([], "a notification is a Bundle"),
        ({"resourceType": "Bundle", "type": "transaction"}, "of type history"),
        ({"resourceType": "Bundle", "type": "history", "entry": []}, "first entry"),
        (status(), "names no subscription"),
        (status(subscription), "notification type None"),
        (
            status(
                {"name": "subscription", "valueReference": {"reference": "Patient/1"}},
                {"name": "type", "valueCode": "heartbeat"},
            ),
            "is not a Subscription",
        ),
        (
            status(
                subscription,
                {"name": "type", "valueCode": "heartbeat"},
                {"name": "events-since-subscription-start", "valueString": "-1"},
            ),
            "not a whole number",
        ),
    ]:
        try:
            read_notification(body, base)
        except NotificationError as error:
            assert error.status == 400 and said in str(error), (said, str(error))
        else:
            raise AssertionError(f"accepted: {body}")


def test_topics_are_chosen_per_pulled_type_and_filtered_per_followed_patient() -> None:
    known = load_topics()
    offered = sorted(known)
    chosen, covered, uncovered = choose_topics(
        ["Patient", "Encounter", "Condition", "Goal", "CarePlan"], offered, known
    )
    assert covered == {"Encounter": ENCOUNTER_TOPIC, "Goal": GOAL_TOPIC}
    assert uncovered == ["Patient", "Condition", "CarePlan"]
    # a topic the EHR does not offer is not chosen, whatever fhirgoal knows of it
    assert choose_topics(["Goal"], [ENCOUNTER_TOPIC], known)[2] == ["Goal"]
    # gas-rating narrows Observation by code (queryCriteria): it never covers a whole type
    assert choose_topics(["Observation"], offered, known)[1] == {}
    topic = chosen[GOAL_TOPIC]
    assert filters_for(topic, ["Goal"], ["p1", "p2"]) == ["Goal?patient=Patient/p1,Patient/p2"]
    many = [f"p{n}" for n in range(PATIENTS_PER_FILTER + 1)]
    assert filters_for(topic, ["Goal"], many) == []  # the whole type: others are ignored


async def test_a_notification_that_cannot_be_applied_is_answered_503_and_applied_when_sent_again(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, front=proxy, subscribe=True, **PUSH_ONLY) as pair:
        made = await _followed_with_goal(pair)
        sid = await _goal_sid(pair)
        gid = made["goal"]["id"]
        await wait_until(lambda: _all_active(pair), within=20, what="the handshakes")
        # the EHR cannot be read for a while (fhirgoal reaches it through the proxy) when it
        # notifies an edit: fhirgoal answers 503, and the EHR's outbox retries
        pair.front.reads_fail = 503
        edited = {**made["goal"], "description": {"text": "Sleep, then run"}}
        response = await pair.ehr_http.put(f"/Goal/{gid}", json=edited)
        assert response.status_code == 200, response.text
        ehr_outbox = pair.ehr.app.state.fhir.database[OUTBOX]

        async def refused() -> bool:
            item = await ehr_outbox.find_one(
                {"dest": f"Subscription/{sid}", "kind": "rest-hook", "ref": f"Goal/{gid}"}
            )
            return item is not None and "HTTP 503" in str(item.get("error"))

        await wait_until(refused, within=20, what="the EHR's notification answered 503")
        [copy] = await pair.in_fhirgoal("Goal", gid)
        assert copy["description"]["text"] == "Sleep through the night"
        pair.front.reads_fail = 0

        async def applied() -> bool:
            [copy] = await pair.in_fhirgoal("Goal", gid)
            return bool(copy["description"]["text"] == "Sleep, then run")

        await wait_until(applied, within=30, what="the edit, once the EHR's retry got through")
        [copy] = await pair.in_fhirgoal("Goal", gid)
        # delivered at least once: the same notification again changes nothing
        seen = await pair.push.store.seen(CONNECTION, sid)
        body = _notification(pair, sid, "event-notification", seen, [f"Goal/{gid}"], [seen])
        again = await _notify(pair, body, await _secret(pair))
        assert again.status_code == 200, again.text
        assert "0 written, 1 unchanged" in again.json()["issue"][0]["diagnostics"]
        [still] = await pair.in_fhirgoal("Goal", gid)
        assert still["meta"]["versionId"] == copy["meta"]["versionId"]
