"""kill -9 of `fhirgoal serve` while notifications are being delivered, then a restart: every
outbox item is delivered, none is lost (store/outbox.py leases, exchange/delivery.py); then
`fhirgoal outbox status` reports them; a topic-based Subscription's event numbers run 1..N
without gap or duplicate across the kill (store/events.py); `fhirgoal outbox run` delivers in
one pass what a server without a worker recorded."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx

from fhirgoal.core.jsonio import loads
from fhirgoal.store.embedded import free_port
from tests.exchange.backport import check_notification
from tests.exchange.receiver import Answer, receiver
from tests.exchange.test_topic_subscriptions import goal, topic_subscription
from tests.helpers import wait_until
from tests.serve_process import ServeProcess

ENV = {
    "FHIRGOAL_OUTBOX_LEASE_SECONDS": "4",
    "FHIRGOAL_OUTBOX_TIMEOUT_SECONDS": "2",
    "FHIRGOAL_OUTBOX_POLL_SECONDS": "0.1",
    "FHIRGOAL_OUTBOX_BACKOFF_BASE_SECONDS": "0.1",
    "FHIRGOAL_OUTBOX_CONCURRENCY": "2",
}
WRITES = 12


async def test_kill_9_during_delivery_then_restart_delivers_every_item(tmp_path: Path) -> None:
    # every notification is slow to be answered: the kill lands while some are in flight
    async with receiver([Answer()] + [Answer(stall=0.3)] * 1000) as hook:
        serve = ServeProcess(tmp_path / "data", free_port(), env=ENV).start()
        try:
            async with httpx.AsyncClient(base_url=serve.base, timeout=30) as client:
                sub = {
                    "resourceType": "Subscription",
                    "status": "requested",
                    "reason": "crash test",
                    "criteria": "Patient",
                    "channel": {"type": "rest-hook", "endpoint": hook.url},
                }
                response = await client.post("/Subscription", json=sub)
                assert response.status_code == 201, response.text
                await wait_until(lambda: len(hook.accepted) == 1, within=15, what="handshake")
                await wait_until(
                    lambda: _status(client, response.json()["id"]),  # type: ignore[arg-type]
                    within=15,
                    what="active",
                )
                ids = []
                for n in range(WRITES):
                    created = await client.post(
                        "/Patient", json={"resourceType": "Patient", "name": [{"family": f"P{n}"}]}
                    )
                    assert created.status_code == 201
                    ids.append(created.json()["id"])
                await wait_until(lambda: len(hook.requests) >= 2, within=15, what="delivering")
            serve.kill_server()
            delivered_before = len(hook.accepted) - 1
            assert delivered_before < WRITES  # the kill came before the end
            serve.start()
            expected = {f"Patient/{rid}/_history/1" for rid in ids}

            def all_delivered() -> bool:
                got = {
                    k.split("|")[1] for k in hook.accepted_keys() if k.startswith("Subscription")
                }
                return expected <= got

            await wait_until(all_delivered, within=60, what="every item delivered")
            serve.stop()
            status = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "fhirgoal.cli", "outbox", "status"],
                env={**serve_env(serve), "FHIRGOAL_DATA_DIR": str(serve.data_dir)},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert status.returncode == 0, status.stderr
            report = status.stdout + status.stderr  # the console writes to stderr
            # the handshake and 12 notifications: none pending, dead or void. The receiver has
            # them all; one may still show `delivering` when SIGTERM came between the answer
            # and its settling (its lease lapses and it is sent again, under the same key).
            row = next(line for line in report.splitlines() if "Subscrip" in line)
            pending, delivering, delivered, dead, void = (int(cell) for cell in row.split("│")[2:7])
            assert (pending, dead, void) == (0, 0, 0), report
            assert delivering + delivered == WRITES + 1, report
        finally:
            serve.kill_group()


async def test_event_numbers_stay_contiguous_across_a_kill_9(tmp_path: Path) -> None:
    async with receiver([Answer()] + [Answer(stall=0.3)] * 1000) as hook:
        serve = ServeProcess(tmp_path / "data", free_port(), env=ENV).start()
        try:
            async with httpx.AsyncClient(base_url=serve.base, timeout=30) as client:
                created = await client.post("/Patient", json={"resourceType": "Patient"})
                pid = created.json()["id"]
                response = await client.post(
                    "/Subscription", json=topic_subscription(hook.url, "goal-change")
                )
                assert response.status_code == 201, response.text
                sid = response.json()["id"]
                await wait_until(
                    lambda: _status(client, sid),  # type: ignore[arg-type]
                    within=15,
                    what="active",
                )
                for n in range(WRITES):
                    written = await client.post("/Goal", json=goal(pid, f"Goal {n}"))
                    assert written.status_code == 201, written.text
                await wait_until(lambda: len(hook.requests) >= 3, within=15, what="delivering")
            serve.kill_server()
            assert len(hook.accepted) - 1 < WRITES  # the kill came before the end
            serve.start()

            def numbers() -> dict[str, int]:
                """Event number by idempotency key, of every event notification accepted."""
                found: dict[str, int] = {}
                for request in hook.accepted:
                    status = check_notification(loads(request.body), "id-only")
                    if status["type"] == "event-notification":
                        number = int(status["notification-event"][0]["event-number"])
                        # a notification sent again carries its first number
                        assert found.setdefault(request.key, number) == number
                return found

            await wait_until(lambda: len(numbers()) == WRITES, within=60, what="every event")
            assert sorted(numbers().values()) == list(range(1, WRITES + 1))
        finally:
            serve.kill_group()


async def _status(client: httpx.AsyncClient, sid: str) -> bool:
    return bool((await client.get(f"/Subscription/{sid}")).json()["status"] == "active")


def serve_env(serve: ServeProcess) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MONGODB_URI"} | serve.env


async def test_outbox_run_delivers_what_a_server_without_worker_recorded(tmp_path: Path) -> None:
    async with receiver() as hook:
        env = {**ENV, "FHIRGOAL_OUTBOX_WORKER": "false"}
        serve = ServeProcess(tmp_path / "data", free_port(), env=env).start()
        try:
            async with httpx.AsyncClient(base_url=serve.base, timeout=30) as client:
                sub = {
                    "resourceType": "Subscription",
                    "status": "active",  # asserted by the client: no handshake
                    "reason": "one pass",
                    "criteria": "Patient",
                    "channel": {"type": "rest-hook", "endpoint": hook.url},
                }
                assert (await client.post("/Subscription", json=sub)).status_code == 201
                created = await client.post("/Patient", json={"resourceType": "Patient"})
                assert created.status_code == 201
            serve.stop()
            assert hook.requests == []  # recorded, not delivered
            run = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "fhirgoal.cli", "outbox", "run"],
                env={**serve_env(serve), "FHIRGOAL_DATA_DIR": str(serve.data_dir)},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stderr
            assert "1 delivery attempt(s)" in run.stdout + run.stderr
            assert [r.key.split("|")[1] for r in hook.accepted] == [
                f"Patient/{created.json()['id']}/_history/1"
            ]
        finally:
            serve.kill_group()
