"""Group members named by business identifier are resolved to Patients (fhir/groups.py), the
function `Group/{id}/$export` and Da Vinci CDex attribution rely on: one match is the member,
none or several are reported, inactive members and other types do not count."""

from __future__ import annotations

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.groups import resolve_members
from fhirgoal.fhir.service import FhirService
from tests.conftest import RunningServer
from tests.helpers import patient, store

MRN = "http://example.org/mrn"


def _with_mrn(pid: str, mrn: str) -> dict[str, object]:
    return {**patient(pid.upper(), id=pid), "identifier": [{"system": MRN, "value": mrn}]}


async def test_members_by_identifier_resolve_and_the_rest_are_reported(
    fhir: RunningServer,
) -> None:
    for pid, mrn in (("g1", "M-1"), ("g2", "M-2"), ("twin-a", "M-TWIN"), ("twin-b", "M-TWIN")):
        await store(fhir.client, _with_mrn(pid, mrn))
    group = {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"identifier": {"system": MRN, "value": "M-1"}}},
            {"entity": {"reference": "Patient/g2"}},
            {"entity": {"identifier": {"system": MRN, "value": "M-1"}}},  # twice: once
            {"entity": {"identifier": {"system": MRN, "value": "M-NONE"}}},
            {"entity": {"identifier": {"system": MRN, "value": "M-TWIN"}}},
            {"entity": {"identifier": {"system": MRN, "value": "M-2"}}, "inactive": True},
            {"entity": {"reference": "Practitioner/doc"}},
        ],
    }
    service: FhirService = fhir.app.state.fhir
    members = await resolve_members(service, UNRESTRICTED, group)
    assert members.patients == ["Patient/g1", "Patient/g2"]
    assert [(u.index, u.matches) for u in members.unresolved] == [(3, 0), (4, 2)]
    outcome = members.unresolved[1].outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "multiple-matches" and issue["severity"] == "warning"
    assert issue["expression"] == ["Group.member[4].entity.identifier"]
    assert "matches 2 Patients" in issue["diagnostics"]
