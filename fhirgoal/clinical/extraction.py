"""Observations from a QuestionnaireResponse: SDC observation-based extraction, one per measure.

http://hl7.org/fhir/uv/sdc/STU4/extraction.html#obs-extract and the observationExtract extension
(http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-observationExtract; STU4 allows a
boolean or a relationship code from http://hl7.org/fhir/uv/sdc/CodeSystem/observation-extract-
relationship: component | member | derived | independent).

SDC as written: `observationExtract` on the Questionnaire root or an item is inherited by the
descendants; a coded question whose effective value is `true` / `independent` becomes its own
Observation (one per answer) with `value[x]` = the answer; a coded group "might represent the
Observation.code of an Observation with no value but with multiple Observation.component
elements", and a child's relationship code says how it joins its parent: `component` -> a
component of the parent, `member` -> its own Observation in the parent's `hasMember`, `derived` ->
its own Observation `derivedFrom` the parent. Where SDC leaves the choice open we decide:

* **One Observation per administration (fhirgoal convention).** When the Questionnaire root (or a
  group) has `observationExtract = true` and children that declare `component` (or `member`), it
  yields ONE Observation. Its value comes from its *value item*: the child whose `code` shares a
  coding with the root's `Questionnaire.code` (or the group's `item.code`) - the calculated total.
  The Observation's `code` is the value item's codes (`ors-total`, LOINC 44261-6), falling back to
  the root/group codes when there is no value item; its `component`s are the answered `component`
  children, in order. The value item declares `observationExtract = false` so that generic SDC
  extractors do not also turn the total into a second Observation. SDC defines no root-level
  parent Observation; treating the root like a coded group is our extension of the group rule.
  A group with neither value, components nor members yields nothing.
* Numbers with a `questionnaire-unit` become `valueQuantity` in that unit (SDC: "SHOULD be a
  valueQuantity"); every built-in score item declares UCUM `{score}`, so ORS totals and PHQ-9
  totals alike are `valueQuantity` (14 `{score}`), as are their items. A decimal without a unit
  is a unitless `valueQuantity` (R4 Observation has no valueDecimal). A coded answer becomes
  `valueCodeableConcept` with the answerOption's display and, when the answer has a weight (from
  its answerOption, answerValueSet or CodeSystem: clinical/weights.py), that weight as
  `ordinalValue`, so an item's score is readable without the Questionnaire.
* A `component` / `member` / `derived` child with no parent Observation is extracted on its own.
* Only `completed` and `amended` responses extract (SDC: extraction needs a complete response);
  an `entered-in-error` one extracts nothing, and the caller retracts what was derived before.
* Observation fields per SDC: status `final` (`amended` when the response is), category from
  `observation-extract-category` (else `survey`), subject, encounter, effectiveDateTime and
  issued (when it is a full instant) from `authored`, performer from `author` (not a Device) and
  `source`, basedOn copied, partOf copied when it is a Procedure, derivedFrom the response.
* Ids are deterministic: `id_for(key)` with key = the item's linkId (the value item's linkId for a
  root Observation, e.g. "ors-total"; "root" if it has none); the n-th repeat of an item or group
  adds "#n", the n-th answer of a repeating item "@n" (n >= 2). `id_for` must turn the key into a
  valid id (e.g. prefix the response id and hash); re-extraction then updates, not duplicates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.scoring import score_compiled
from fhirgoal.clinical.sdc import (
    EXT_OBS_EXTRACT,
    CompiledQuestionnaire,
    ItemDef,
    answer_value,
    compile_questionnaire,
    ext_value,
    plain_json,
)
from fhirgoal.clinical.weights import EXT_ORDINAL, Terminology

SURVEY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "survey",
            "display": "Survey",
        }
    ]
}
_ID_SAFE = re.compile(r"[^A-Za-z0-9.-]")
_INSTANT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_RELATED = frozenset({"component", "member", "derived"})
_ON = frozenset({True, "independent", "member", "derived"})


def extract_observations(
    questionnaire: dict[str, Any],
    response: dict[str, Any],
    *,
    id_for: Callable[[str], str],
    terminology: Terminology | None = None,
) -> list[dict[str, Any]]:
    """The Observations a response yields (scored first, so totals are present); [] unless the
    response is completed or amended. Assumes a response that passed validate_response;
    `terminology` as for scoring it (the ValueSets / CodeSystems held for its weights)."""
    if response.get("status") not in ("completed", "amended"):
        return []
    cq = compile_questionnaire(questionnaire)
    held = terminology or Terminology()
    scored = score_compiled(cq, response, held)
    return _Extractor(cq, scored, id_for, held).run()


def observation_ids(response_id: str) -> Callable[[str], str]:
    """An `id_for` giving `{response id}-{key}` (e.g. "qr7-ors-total"), a valid R4 id: other
    characters become "-", and when that would be ambiguous or longer than 64 characters the
    id is a hash of the pair instead. Same response and key, same id."""

    def id_for(key: str) -> str:
        readable = f"{response_id}-{_ID_SAFE.sub('-', key)}"
        if len(readable) <= 64 and not _ID_SAFE.search(response_id + key):
            return readable
        return "x" + hashlib.sha256(f"{response_id}|{key}".encode()).hexdigest()[:40]

    return id_for


def _shares(codes: list[dict[str, Any]], others: list[dict[str, Any]]) -> bool:
    pairs = {(c.get("system"), c.get("code")) for c in others}
    return any((c.get("system"), c.get("code")) in pairs for c in codes)


def _codings(codes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # SDC: when some item.code elements are tagged observationExtract=true, only those propagate.
    tagged = [c for c in codes if ext_value(c, EXT_OBS_EXTRACT) is True]
    return [{k: v for k, v in c.items() if k != "extension"} for c in tagged or codes]


class _Extractor:
    def __init__(
        self,
        cq: CompiledQuestionnaire,
        response: dict[str, Any],
        id_for: Callable[[str], str],
        terminology: Terminology,
    ) -> None:
        self.cq = cq
        self.terminology = terminology
        self.id_for = id_for
        self.out: list[dict[str, Any]] = []
        self.consumed: set[int] = set()  # value items already used by their container
        self.derived_from: set[int] = set()  # Observations others are derivedFrom: keep them
        self.base = self._base(response)
        self.response = response

    def run(self) -> list[dict[str, Any]]:
        cq, nodes = self.cq, self.response.get("item", [])
        parent = None
        if cq.root_extract in _ON and any(
            d.extract in _RELATED and d.declares_extract for d in cq.items
        ):
            parent = self._container(
                list(cq.resource.get("code", [])), cq.items, nodes, "", cq.root_category
            )
        self._walk(cq.items, nodes, parent, "")
        if parent is not None:
            self._drop_if_empty(parent)
        return self.out

    def _base(self, response: dict[str, Any]) -> dict[str, Any]:
        base: dict[str, Any] = {}
        if response.get("basedOn"):
            base["basedOn"] = response["basedOn"]
        procedures = [
            r
            for r in response.get("partOf", [])
            if str(r.get("reference", "")).startswith("Procedure/")
        ]
        if procedures:
            base["partOf"] = procedures
        base["status"] = "amended" if response.get("status") == "amended" else "final"
        for key in ("subject", "encounter"):
            if response.get(key):
                base[key] = response[key]
        authored = response.get("authored")
        if authored:
            base["effectiveDateTime"] = authored
            if _INSTANT.match(authored):
                base["issued"] = authored
        performers: list[dict[str, Any]] = []
        for who in (response.get("author"), response.get("source")):
            ref = who.get("reference", "") if isinstance(who, dict) else ""
            if who and not ref.startswith("Device/") and who not in performers:
                performers.append(who)
        if performers:
            base["performer"] = performers
        return base

    def _observation(
        self,
        key: str,
        codes: list[dict[str, Any]],
        category: list[dict[str, Any]] | None,
        value: dict[str, Any] | None,
        components: list[dict[str, Any]],
    ) -> dict[str, Any]:
        code: dict[str, Any] = {"coding": _codings(codes)}
        display = next((c["display"] for c in code["coding"] if c.get("display")), None)
        if display:
            code["text"] = display
        base = self.base
        obs: dict[str, Any] = {"resourceType": "Observation", "id": self.id_for(key)}
        for field in ("basedOn", "partOf", "status"):
            if field in base:
                obs[field] = plain_json(base[field])
        # copies: the category lives in the cached Questionnaire, and callers may edit results
        obs["category"] = plain_json(category or [SURVEY])
        obs["code"] = code
        for field in ("subject", "encounter", "effectiveDateTime", "issued", "performer"):
            if field in base:
                obs[field] = plain_json(base[field])
        if value:
            obs.update(value)
        if self.response.get("id"):
            obs["derivedFrom"] = [{"reference": f"QuestionnaireResponse/{self.response['id']}"}]
        if components:
            obs["component"] = components
        return obs

    def _container(
        self,
        codes: list[dict[str, Any]],
        definitions: list[ItemDef],
        nodes: list[dict[str, Any]],
        key: str,
        category: list[dict[str, Any]] | None,
    ) -> dict[str, Any] | None:
        value_item = next(
            (d for d in definitions if d.type != "group" and codes and _shares(d.codes, codes)),
            None,
        )
        value = None
        components = []
        for node in nodes:
            definition = self.cq.by_link.get(node.get("linkId", ""))
            if definition is None or definition not in definitions:
                continue
            answers = node.get("answer", [])
            if definition is value_item and answers:
                value = self._value(definition, answers[0])
            elif definition.extract == "component" and definition.codes:
                for answer in answers:
                    converted = self._value(definition, answer)
                    if converted:
                        components.append(
                            {"code": {"coding": _codings(definition.codes)}, **converted}
                        )
        if value_item is not None:
            self.consumed.add(id(value_item))
        obs_codes = value_item.codes if value_item is not None else codes
        if not obs_codes:
            return None
        key = key or (value_item.link_id if value_item is not None else "root")
        obs = self._observation(key, obs_codes, category, value, components)
        self.out.append(obs)
        return obs

    def _drop_if_empty(self, obs: dict[str, Any]) -> None:
        if (
            not any(k.startswith("value") for k in obs)
            and "component" not in obs
            and "hasMember" not in obs
            and id(obs) not in self.derived_from
        ):
            self.out.remove(obs)

    def _walk(
        self,
        definitions: list[ItemDef],
        nodes: list[dict[str, Any]],
        parent: dict[str, Any] | None,
        suffix: str,
    ) -> None:
        seen: dict[str, int] = {}
        for node in nodes:
            definition = self.cq.by_link.get(node.get("linkId", ""))
            if definition is None or definition.type == "display":
                continue
            nth = seen[definition.link_id] = seen.get(definition.link_id, 0) + 1
            own = suffix + ("" if nth == 1 else f"#{nth}")
            key = definition.link_id + own
            if definition.type == "group":
                group_obs = None
                if definition.extract in _ON and definition.codes:
                    group_obs = self._container(
                        definition.codes,
                        definition.children,
                        node.get("item", []),
                        key,
                        definition.category,
                    )
                    if group_obs is not None:
                        self._relate(definition, group_obs, parent)
                self._walk(definition.children, node.get("item", []), group_obs or parent, own)
                if group_obs is not None:
                    self._drop_if_empty(group_obs)
                continue
            claimed = id(definition) in self.consumed or (
                definition.extract == "component" and parent is not None
            )
            for j, answer in enumerate(node.get("answer", [])):
                answer_suffix = own + ("" if j == 0 else f"@{j + 1}")
                obs = None
                if (
                    not claimed
                    and (definition.extract in _ON or definition.extract == "component")
                    and definition.codes
                ):
                    obs = self._question(definition, answer, definition.link_id + answer_suffix)
                    if obs is not None:
                        self._relate(definition, obs, parent)
                self._walk(
                    definition.children, answer.get("item", []), obs or parent, answer_suffix
                )

    def _question(
        self, definition: ItemDef, answer: dict[str, Any], key: str
    ) -> dict[str, Any] | None:
        value = self._value(definition, answer)
        if value is None:
            return None
        components = []
        for child_node in answer.get("item", []):
            child = self.cq.by_link.get(child_node.get("linkId", ""))
            if child is not None and child.extract == "component" and child.codes:
                for child_answer in child_node.get("answer", []):
                    converted = self._value(child, child_answer)
                    if converted:
                        components.append({"code": {"coding": _codings(child.codes)}, **converted})
        obs = self._observation(key, definition.codes, definition.category, value, components)
        self.out.append(obs)
        return obs

    def _relate(
        self, definition: ItemDef, obs: dict[str, Any], parent: dict[str, Any] | None
    ) -> None:
        if parent is None:
            return
        if definition.extract == "member":
            parent.setdefault("hasMember", []).append({"reference": f"Observation/{obs['id']}"})
        elif definition.extract == "derived":
            obs.setdefault("derivedFrom", []).append({"reference": f"Observation/{parent['id']}"})
            self.derived_from.add(id(parent))

    def _value(self, definition: ItemDef, answer: dict[str, Any]) -> dict[str, Any] | None:
        found = answer_value(answer)
        if found is None:
            return None
        key, value = found
        if key in ("valueDecimal", "valueInteger"):
            if definition.unit:
                return {"valueQuantity": {"value": value, **_unit(definition.unit)}}
            if key == "valueInteger":
                return {"valueInteger": value}
            return {"valueQuantity": {"value": Decimal(value)}}
        if key == "valueCoding" and isinstance(value, dict):
            weight = self.cq.weight(definition.link_id, value, self.terminology)
            return {"valueCodeableConcept": _concept(definition, value, weight)}
        if key in ("valueQuantity", "valueString", "valueBoolean", "valueDateTime", "valueTime"):
            return {key: value}
        if key == "valueDate":
            return {"valueDateTime": value}
        if key == "valueUri":
            return {"valueString": value}
        return None  # attachment / reference answers have no Observation.value[x]


def _unit(unit: dict[str, Any]) -> dict[str, Any]:
    fields = {
        "unit": unit.get("display") or unit.get("code"),
        "system": unit.get("system"),
        "code": unit.get("code"),
    }
    return {k: v for k, v in fields.items() if v}


def _concept(definition: ItemDef, coding: dict[str, Any], weight: Decimal | None) -> dict[str, Any]:
    option = definition.option_for(coding)
    source = option.coding if option is not None else coding
    out = {k: source[k] for k in ("system", "version", "code", "display") if source.get(k)}
    if weight is not None:
        out["extension"] = [{"url": EXT_ORDINAL, "valueDecimal": weight}]
    concept: dict[str, Any] = {"coding": [out]}
    if out.get("display"):
        concept["text"] = out["display"]
    return concept
