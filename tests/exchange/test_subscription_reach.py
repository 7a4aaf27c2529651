"""The reach kept with a Subscription version, as a server restarted on the stored data finds it
(exchange/subscription_reach.py): a Subscription stored before reaches were kept runs as it did;
one whose reach cannot be read back, or lacks a type it triggers on, is not run, and `$status`
says why. The stored documents are changed in the database itself between the two runs, as an
older release (or damage) would have left them."""

from __future__ import annotations

import pytest

from fhirgoal.auth.scopes import parse_scopes
from fhirgoal.core.access import AccessContext, Grant
from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.subscription_reach import REACH, pack, writer_reach
from fhirgoal.store.mongo import connect
from tests.conftest import fresh_settings, running
from tests.exchange.receiver import receiver
from tests.exchange.test_subscriptions import FAST
from tests.helpers import create, finished_encounter, patient, wait_until
from tests.payer.test_subscription_reach import classic, delivery, settled

ENCOUNTER = "Encounter?status=finished"


async def test_old_subscriptions_run_and_unreadable_reaches_fail_closed(mongo_uri: str) -> None:
    settings = fresh_settings(mongo_uri, **FAST)
    try:
        async with receiver() as old, receiver() as damaged, receiver() as narrowed:
            async with running(settings, drop_database=False) as first:
                subs = {}
                for name, hook in (("old", old), ("damaged", damaged), ("narrowed", narrowed)):
                    subs[name] = (await create(first.client, classic(hook.url, ENCOUNTER)))["id"]
                await settled(first.client, *subs.values())
            mongo = connect(mongo_uri)
            try:
                stored = mongo[settings.db]["Subscription"]
                kept = await stored.find_one({"_id": subs["old"]})
                assert kept is not None and REACH in kept["srv"]  # every new version has one
                await stored.update_one({"_id": subs["old"]}, {"$unset": {"srv": ""}})
                await stored.update_one(
                    {"_id": subs["damaged"]}, {"$set": {f"srv.{REACH}": b"\x05not bson"}}
                )
                await stored.update_one(
                    {"_id": subs["narrowed"]}, {"$set": {f"srv.{REACH}": pack({"Goal": {}})}}
                )
            finally:
                await mongo.close()
            async with running(settings) as second:
                pid = (await create(second.client, patient()))["id"]
                encounter = await create(second.client, finished_encounter(pid))

                async def old_heard() -> bool:
                    return any(encounter["id"] in r.path for r in old.accepted)

                await wait_until(old_heard, what="the old Subscription runs as it did")
                for name, says in (("damaged", "cannot be read"), ("narrowed", "Encounter")):
                    values = await delivery(second.client, subs[name])
                    assert values["error"]["text"].startswith(
                        "not run: the reach of its writer cannot be established"
                    ), values["error"]
                    assert says in values["error"]["text"]
                    # nothing recorded for it with the write: there is nothing on its way
                    assert values["delivery"]["pending"] == values["delivery"]["failing"] == 0
                    assert values["delivery"]["delivered"] == 1  # its handshake, before
                assert "error" not in await delivery(second.client, subs["old"])
                assert [r.method for r in damaged.accepted + narrowed.accepted] == ["POST"] * 2
    finally:
        mongo = connect(mongo_uri)
        await mongo.drop_database(settings.db)
        await mongo.close()


def test_a_reach_that_could_not_be_matched_as_writes_happen_is_refused() -> None:
    """No scope compiles to such a condition today (the compiler's operators are all matched in
    memory); should one, the Subscription is refused rather than run unrestricted or not at all."""
    scopes = parse_scopes("system/Encounter.rs")
    (scope,) = scopes.resources
    access = AccessContext(
        subject="client",
        grants=(Grant("Encounter", scope, {"tok": "status#finished", "$text": {"x": 1}}),),
    )
    with pytest.raises(FhirError) as refused:
        writer_reach(access, ["Encounter"])
    assert refused.value.status == 422
    assert refused.value.issues[0].expression == "Subscription.criteria"
    assert "'$text'" in refused.value.diagnostics
    fine = AccessContext(
        subject="client", grants=(Grant("Encounter", scope, {"comp": "Patient/1"}),)
    )
    assert writer_reach(fine, ["Encounter"]) == {"Encounter": {"comp": "Patient/1"}}
