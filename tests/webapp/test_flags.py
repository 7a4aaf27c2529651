"""Open alerts on the overview, acknowledged and resolved by the clinician: the Flag becomes
inactive with period.end, written with If-Match on the version the page showed, so a Flag the
server changed meanwhile is not overwritten."""

from __future__ import annotations

from typing import Any

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.webapp.conftest import axe_violations, open_patient, screenshot

PATIENT = "demo-blair"


async def active_flags(server: SmartServer) -> list[Any]:
    return await server.service.find_resources(
        UNRESTRICTED, "Flag", [("patient", f"Patient/{PATIENT}"), ("status", "active")], 50
    )


async def test_an_alert_is_resolved_with_if_match(
    ehr: SmartServer, page: Any, axe_source: str
) -> None:
    overview = await open_patient(page, ehr, PATIENT)
    flags = await active_flags(ehr)
    assert flags, "the demo leaves Blair with an open alert"
    flag = flags[0]
    item = page.locator(f"#alert-{flag.id}")
    assert await item.count() == 1
    assert await axe_violations(page, axe_source) == []

    # the server changes the Flag after the page was shown: the stale resolve changes nothing
    changed = {**flag.resource, "code": {**flag.resource["code"], "text": "Updated meanwhile"}}
    changed.pop("meta", None)
    await ehr.service.update(UNRESTRICTED, "Flag", flag.id, changed, None)
    await item.get_by_role("button", name="Acknowledge and resolve").click()
    await page.wait_for_url("**/?flag=changed")
    assert "Nothing was changed" in await page.locator("#flag-notice").inner_text()
    current = await ehr.service.current(UNRESTRICTED, "Flag", flag.id)
    assert current is not None and current.resource is not None
    assert current.resource["status"] == "active"
    assert "Updated meanwhile" in await page.locator(f"#alert-{flag.id}").inner_text()

    # on the page as it is now, it resolves
    item = page.locator(f"#alert-{flag.id}")
    await item.get_by_label("Note (optional)").fill("Discussed sleep plan; review in 3 weeks")
    await screenshot(page, "alerts")
    await item.get_by_role("button", name="Acknowledge and resolve").click()
    await page.wait_for_url("**/?flag=resolved")
    assert await page.locator(f"#alert-{flag.id}").count() == 0
    resolved = await ehr.service.current(UNRESTRICTED, "Flag", flag.id)
    assert resolved is not None and resolved.resource is not None
    assert resolved.resource["status"] == "inactive"
    assert resolved.resource["period"]["end"]
    assert "Discussed sleep plan" in resolved.resource["code"]["text"]
    assert "Practitioner/demo-therapist" in resolved.resource["code"]["text"]
    assert int(resolved.version) == int(current.version) + 1
    assert flag.id not in {f.id for f in await active_flags(ehr)}
    assert overview in page.url
