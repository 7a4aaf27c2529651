"""QuestionnaireResponses yield their Observations on write, and on `$extract`.

SDC observation-based extraction (http://hl7.org/fhir/uv/sdc/STU4/extraction.html#obs-extract;
the convention for one Observation per administration is in clinical/extraction.py), wired into
the write path (fhir/hooks.py):

- before the response is stored: its Questionnaire is looked up by canonical (`url`,
  `url|version` or `Questionnaire/{id}`), with the ValueSets and CodeSystems the server holds that
  its answers' weights need (clinical/terminology.py), the answers are validated and scored (an
  answer of 11 on a 0-10 item, or a missing required item, is a 422 and nothing is stored; a
  calculation the server cannot do is a warning in the write's OperationOutcome), and the
  Observations are built and validated, so a response whose derived results could not be stored
  is refused;
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

from dataclasses import dataclass
from typing import Any

from fhirgoal.clinical.questionnaires import (
    assess,
    compile_questionnaire,
    extract_observations,
    observation_ids,
)
from fhirgoal.clinical.terminology import find_canonical, held_terminology
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError, Issue, informational_outcome
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
    return await find_canonical(svc, access, "Questionnaire", canonical)


@dataclass
class Derived:
    """What a response yields, and what its client should be told about it."""

    observations: list[dict[str, Any]]
    warnings: list[Issue]


async def derive(
    svc: FhirService, access: AccessContext, response: dict[str, Any]
) -> Derived | None:
    """The Observations `response` yields, validated; None when its Questionnaire is unknown."""
    canonical = response.get("questionnaire")
    if not isinstance(canonical, str) or not canonical:
        return None
    questionnaire = await find_questionnaire(svc, access, canonical)
    if questionnaire is None:
        return None
    terminology = await held_terminology(
        svc, access, compile_questionnaire(questionnaire), response
    )
    assessed = assess(questionnaire, response, terminology)
    observations = extract_observations(
        questionnaire,
        assessed.response,
        id_for=observation_ids(response["id"]),
        terminology=terminology,
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
    return Derived(observations, assessed.warnings)


class ResponseExtractionHook:
    resource_types = frozenset({"QuestionnaireResponse"})

    def __init__(self, service: FhirService) -> None:
        self.service = service

    def interested(self, event: WriteEvent) -> bool:
        return True

    async def before_write(self, event: WriteEvent) -> None:
        if event.resource is not None:
            derived = await derive(self.service, UNRESTRICTED, event.resource)
            event.state["observations"] = derived.observations if derived else None
            if derived is not None:
                event.warnings.extend(derived.warnings)

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
                derived = await derive(svc, UNRESTRICTED, resource)
                wanted = derived.observations if derived is not None else []
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
    derived = await derive(svc, call.access, response)
    if derived is None:
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
            for o in derived.observations
        ],
    }
    parameters: list[dict[str, Any]] = [{"name": "return", "resource": bundle}]
    issues = [w.to_json("informational") for w in derived.warnings]
    if not derived.observations:
        status = response.get("status")
        why = (
            f"nothing to extract: the response is {status}; only a completed or amended "
            "response yields Observations"
            if status not in ("completed", "amended")
            else "nothing to extract: no answered item of this response is marked for "
            "extraction (sdc-questionnaire-observationExtract on the Questionnaire, an item or "
            "an item.code) with a code to give its Observation"
        )
        issues.insert(0, informational_outcome(why)["issue"][0])
    if issues:
        outcome = {"resourceType": "OperationOutcome", "issue": issues}
        parameters.append({"name": "issues", "resource": outcome})
    return Outcome(200, body={"resourceType": "Parameters", "parameter": parameters})
