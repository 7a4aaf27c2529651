"""QuestionnaireResponses yield their Observations on write, and on `$extract`.

SDC observation-based extraction (http://hl7.org/fhir/uv/sdc/STU4/extraction.html#obs-extract;
the convention for one Observation per administration is in clinical/extraction.py), wired into
the write path (fhir/hooks.py):

- before the response is stored: its Questionnaire is looked up by canonical (`url`,
  `url|version` or `Questionnaire/{id}`), the answers are validated and scored (an answer of 11 on
  a 0-10 item, or a missing required item, is a 422 and nothing is stored), and the Observations
  are built and validated, so a response whose derived results could not be stored is refused;
- after it is stored: the derived Observations are brought in line with the response as it now
  is - created, updated (an `amended` response gives `amended` Observations), and those it no
  longer yields (an `entered-in-error` or deleted response, an item cleared by an amendment) are
  set to `entered-in-error`, never silently deleted. Ids are fixed per response and item, so a
  re-run after a crash (the pending mark) converges instead of duplicating.

A response whose Questionnaire the server does not hold is stored as sent and yields nothing:
SDC lets forms live elsewhere, and without the form there are no rules to apply.

`QuestionnaireResponse/{id}/$extract` and `QuestionnaireResponse/$extract` (with a
`questionnaire-response` parameter) return what the response yields as a transaction Bundle,
without storing it, as the SDC operation defines
(http://hl7.org/fhir/uv/sdc/OperationDefinition/QuestionnaireResponse-extract).
"""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.questionnaires import (
    extract_observations,
    observation_ids,
    validate_and_score,
)
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError, informational_outcome
from fhirgoal.core.fields import NEWEST_FIRST
from fhirgoal.fhir.hooks import WriteEvent
from fhirgoal.fhir.operations import Invocation, Operation, OperationRegistry
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.service import FhirService

MAX_DERIVED = 500
SDC_EXTRACT = "http://hl7.org/fhir/uv/sdc/OperationDefinition/QuestionnaireResponse-extract"


async def find_questionnaire(
    svc: FhirService, access: AccessContext, canonical: str
) -> dict[str, Any] | None:
    """The Questionnaire a response names, or None when the server holds none."""
    if canonical.startswith("Questionnaire/"):
        version = await svc.current(access, "Questionnaire", canonical.split("/", 1)[1])
        return version.resource if version is not None and not version.deleted else None
    url, _, wanted = canonical.partition("|")
    params = [("url", url)] + ([("version", wanted)] if wanted else [])
    found = await svc.find_resources(access, "Questionnaire", params, 20, NEWEST_FIRST)
    questionnaires = [v.resource for v in found if v.resource is not None]
    active = [q for q in questionnaires if q.get("status") == "active"]
    chosen = active or questionnaires
    return chosen[0] if chosen else None


async def derive(
    svc: FhirService, access: AccessContext, response: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """The Observations `response` yields, validated; None when its Questionnaire is unknown."""
    canonical = response.get("questionnaire")
    if not isinstance(canonical, str) or not canonical:
        return None
    questionnaire = await find_questionnaire(svc, access, canonical)
    if questionnaire is None:
        return None
    scored = validate_and_score(questionnaire, response)
    observations = extract_observations(
        questionnaire, scored, id_for=observation_ids(response["id"])
    )
    for observation in observations:
        try:
            svc.validator.validate(observation)
        except FhirError as error:
            raise FhirError(
                "processing",
                "the response is valid, but what it yields is not: "
                + "; ".join(i.diagnostics for i in error.issues),
                "QuestionnaireResponse",
            ) from None
    return observations


class ResponseExtractionHook:
    resource_types = frozenset({"QuestionnaireResponse"})

    def __init__(self, service: FhirService) -> None:
        self.service = service

    def interested(self, event: WriteEvent) -> bool:
        return True

    async def before_write(self, event: WriteEvent) -> None:
        if event.resource is not None:
            event.state["observations"] = await derive(self.service, UNRESTRICTED, event.resource)

    async def after_write(self, event: WriteEvent) -> None:
        """Bring the derived Observations in line with the response as it is *now*: when two
        writes of one response race, the slower hook must not restore what the newer retracted,
        so each pass derives from the current version and repeats if it changed meanwhile."""
        svc = self.service
        for _ in range(svc.settings.write_retries):
            current = await svc.current(UNRESTRICTED, "QuestionnaireResponse", event.id)
            resource = current.resource if current is not None else None
            if resource is None:
                wanted: list[dict[str, Any]] = []
            elif (
                event.version is not None
                and current is not None
                and (current.version == event.version.version and "observations" in event.state)
            ):
                wanted = event.state["observations"] or []
            else:
                wanted = await derive(svc, UNRESTRICTED, resource) or []
            await self._apply(event.id, wanted)
            after = await svc.current(UNRESTRICTED, "QuestionnaireResponse", event.id)
            if (after.version if after else None) == (current.version if current else None):
                return

    async def _apply(self, rid: str, wanted: list[dict[str, Any]]) -> None:
        svc = self.service
        source = f"QuestionnaireResponse/{rid}"
        existing = await svc.find_resources(
            UNRESTRICTED, "Observation", [("derived-from", source)], MAX_DERIVED
        )
        current = {v.id: v.resource for v in existing if v.resource is not None}
        for observation in wanted:
            before = current.get(observation["id"])
            if before is None or _content(before) != _content(observation):
                await svc.update(UNRESTRICTED, "Observation", observation["id"], observation, None)
        keep = {o["id"] for o in wanted}
        for oid, before in current.items():
            if oid not in keep and before.get("status") != "entered-in-error":
                retracted = {**_content(before), "status": "entered-in-error"}
                await svc.update(UNRESTRICTED, "Observation", oid, retracted, None)


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


# ---- $extract ------------------------------------------------------------------------------------
def register(operations: OperationRegistry) -> None:
    for level in ("instance", "type"):
        operations.register(
            Operation("extract", level, "QuestionnaireResponse", extract, definition=SDC_EXTRACT)
        )


async def extract(svc: FhirService, call: Invocation) -> Outcome:
    if call.id is not None:
        call.parameters.reject_unknown(set())
        version = (await svc.read(call.access, "QuestionnaireResponse", call.id)).version
        assert version is not None and version.resource is not None
        response = version.resource
    else:
        call.parameters.reject_unknown({"questionnaire-response"})
        given = call.parameters.one("questionnaire-response")
        if given is None or not isinstance(given.element.get("resource"), dict):
            raise FhirError("invalid", "questionnaire-response (a resource) is required",
                            given.expression if given else "Parameters")  # fmt: skip
        response = {"id": "extract", **given.element["resource"]}
        if response.get("resourceType") != "QuestionnaireResponse":
            raise FhirError("invalid", "questionnaire-response must be a QuestionnaireResponse",
                            given.expression)  # fmt: skip
        svc.validator.validate(response)
    observations = await derive(svc, call.access, response)
    if observations is None:
        raise FhirError(
            "processing",
            f"the server holds no Questionnaire {response.get('questionnaire')!r} to extract with",
            "QuestionnaireResponse.questionnaire",
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{call.base_url}/Observation/{o['id']}",
                "resource": o,
                "request": {"method": "PUT", "url": f"Observation/{o['id']}"},
            }
            for o in observations
        ],
    }
    parameters: list[dict[str, Any]] = [{"name": "return", "resource": bundle}]
    if not observations:
        status = response.get("status")
        why = (
            f"nothing to extract: the response is {status}; only a completed or amended "
            "response yields Observations"
            if status not in ("completed", "amended")
            else "nothing to extract: no answered item of this response is marked for "
            "extraction (sdc-questionnaire-observationExtract on the Questionnaire, an item or "
            "an item.code) with a code to give its Observation"
        )
        parameters.append({"name": "issues", "resource": informational_outcome(why)})
    return Outcome(200, body={"resourceType": "Parameters", "parameter": parameters})
