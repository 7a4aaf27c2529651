"""What the audit trail says about a FHIR REST request: its AuditEvent and, for a write, its
Provenance. Pure functions, no I/O; auth/audit.py stores what they build.

https://hl7.org/fhir/R4/auditevent.html (type `rest`, subtype from restful-interaction, action
C/R/U/D/E, outcome 0/4/8, agent with network address, entity `what`, query and patient) and
https://hl7.org/fhir/R4/provenance.html (target, recorded, activity, agent), after IHE BALP's
shape for RESTful events (https://profiles.ihe.net/ITI/BALP/). Interactions are named from the
method and path as https://hl7.org/fhir/R4/http.html and operations.html#request lay them out.

An event is written straight to the JSON its append-log segment holds (store/append_log.py): the
parts that repeat (event type and subtype, the outcome of a status, the agents of a token calling
from one address) are serialized once and joined with the few that change (id, time, entities).
Every part goes through jsonio.dumps, so whatever a request path, query or token holds is escaped.
"""

from __future__ import annotations

import base64
import functools
import itertools
import secrets
from collections.abc import Iterable
from typing import Any, NamedTuple

from fhirgoal.core.access import AccessContext
from fhirgoal.core.jsonio import dumps

EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
CLIENT_SYSTEM = "urn:fhirgoal:oauth-client"
_ACTIVITY = {"C": "CREATE", "U": "UPDATE", "D": "DELETE"}
_SOURCE = {
    "observer": {"display": "fhirgoal"},
    "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
}
_PATIENT_ROLE = {
    "system": "http://terminology.hl7.org/CodeSystem/object-role",
    "code": "1",
    "display": "Patient",
}
_QUERY_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"}
_AGENTS_KEPT = 4096  # (token, address) pairs whose agents are kept serialized

# Event ids: a random 64-bit prefix per process and a counter, unique like a UUID4 across processes
# and restarts at a tenth of the cost of uuid4() (a system call and an object per event). An id is
# fixed when the event is built, so that resending a batch cannot store it twice.
_ID_PREFIX = secrets.token_hex(8)
_ID_SEQUENCE = itertools.count(1)


class Interaction(NamedTuple):
    """What a request does, as its AuditEvent says it."""

    action: str  # C R U D E (E: a search or an operation, per the AuditEvent action value set)
    subtype: str  # restful-interaction code
    resource_type: str | None = None
    resource_id: str | None = None
    compartment: str | None = None  # "Patient/123" of a compartment search
    query: bytes = b""

    @property
    def writes(self) -> bool:
        return self.action in "CUD"


def stored_before_response(method: str, path: str) -> bool:
    """Whether the request may change data, so that its audit must be durable before it is
    answered: anything but GET, HEAD and a POST `_search` (a POST operation included)."""
    if method == "GET" or method == "HEAD":
        return False
    return not (method == "POST" and path.endswith("/_search"))


def classify(method: str, path: str, query: bytes) -> Interaction:
    """The interaction of a request under `/fhir`, from its method, path and query."""
    parts = [p for p in path[len("/fhir") :].split("/") if p]
    n = len(parts)
    if n and parts[-1].startswith("$"):  # [base]/$op, [base]/Type/$op, [base]/Type/id/$op
        rt = parts[0] if n >= 2 else None
        return Interaction("E", "operation", rt, parts[1] if n == 3 else None, query=query)
    if (
        n and parts[0] == "_export"
    ):  # Bulk Data status, cancel and file downloads (fhir/rest_export.py)
        action = "D" if method == "DELETE" else "R"
        return Interaction(action, "operation", query=path[len("/fhir/") :].encode())
    rt = parts[0] if n and not parts[0].startswith("_") else None
    rid = parts[1] if n >= 2 and not parts[1].startswith("_") else None
    if method == "GET" or method == "HEAD":
        if n == 0:
            return Interaction("E", "search-system", query=query)
        if parts[0] == "_history":
            return Interaction("R", "history-system", query=query)
        if n == 1:
            return Interaction("E", "search-type", rt, query=query)
        if n == 2 and parts[1] == "_history":
            return Interaction("R", "history-type", rt, query=query)
        if n == 2:
            return Interaction("R", "read", rt, rid)
        if n == 3 and parts[2] == "_history":
            return Interaction("R", "history-instance", rt, rid, query=query)
        if n == 4 and parts[2] == "_history":
            return Interaction("R", "vread", rt, rid)
        if n == 3:
            compartment = f"{parts[0]}/{parts[1]}"
            return Interaction("E", "search-type", parts[2], None, compartment, query)
    if method == "POST":
        if n == 2 and parts[1] == "_search":
            return Interaction("E", "search-type", rt, query=query)
        if n == 0:  # a Bundle to the base: `batch` until its type is known (`of_bundle`)
            return Interaction("E", "batch", query=query)
        return Interaction("C", "create", rt)
    if method == "PUT":
        return Interaction("U", "update", rt, rid, query=query)
    if method == "PATCH":
        return Interaction("U", "patch", rt, rid)
    if method == "DELETE":
        return Interaction("D", "delete", rt, rid, query=query)
    return Interaction("E", "operation", rt, rid, query=query)


def of_bundle(interaction: Interaction, bundle_type: Any) -> Interaction:
    """The interaction of a Bundle posted to the base, named by the Bundle's type: restful-
    interaction has `transaction` and `batch`, and the path alone cannot tell them apart (the
    handler records the type it read in the request's state, `bundle_type`)."""
    if interaction.subtype == "batch" and bundle_type == "transaction":
        return interaction._replace(subtype="transaction")
    return interaction


def who(context: AccessContext) -> dict[str, Any]:
    """The user a token acts for, else its client."""
    if context.fhir_user:
        return {"reference": context.fhir_user}
    client = context.client_id or context.subject
    return {"identifier": {"system": CLIENT_SYSTEM, "value": client}, "display": client}


def written(headers: dict[str, str], interaction: Interaction) -> str | None:
    """`Type/id/_history/vid` of the version a successful write produced."""
    location = headers.get("location") or headers.get("content-location")
    if location and "/_history/" in location:
        parts = location.rstrip("/").split("/")
        return "/".join(parts[-4:])
    etag = headers.get("etag", "")
    version = etag.removeprefix("W/").strip('"')
    if interaction.resource_type and interaction.resource_id and version.isdigit():
        return f"{interaction.resource_type}/{interaction.resource_id}/_history/{version}"
    return None


def patients(
    context: AccessContext, interaction: Interaction, seen: Iterable[str] | None
) -> list[str]:
    """The patients a request concerned: the token's, the compartment searched, the Patient
    read, and those whose compartment held the resource answered (`seen`)."""
    found: set[str] = set(seen or ())
    if context.patient:
        found.add(f"Patient/{context.patient}")
    if interaction.compartment and interaction.compartment.startswith("Patient/"):
        found.add(interaction.compartment)
    if interaction.resource_type == "Patient" and interaction.resource_id:
        found.add(f"Patient/{interaction.resource_id}")
    return sorted(found)


def provenance(
    context: AccessContext, interaction: Interaction, target: str, recorded: str
) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": recorded,
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": _ACTIVITY[interaction.action],
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": who(context),
            }
        ],
    }


@functools.cache
def _head(subtype: str, action: str) -> bytes:
    """`{"resourceType":"AuditEvent",...,"source":{...}` without its closing brace."""
    return dumps(
        {
            "resourceType": "AuditEvent",
            "type": EVENT_TYPE,
            "subtype": [{"system": INTERACTION_SYSTEM, "code": subtype}],
            "action": action,
            "source": _SOURCE,
        }
    )[:-1]


@functools.cache
def _outcome(status: int) -> bytes:
    """`,"outcome":..,"outcomeDesc":..` for an HTTP status: 0 success, 4 minor, 8 serious failure."""
    outcome = "0" if status < 400 else "4" if status < 500 else "8"
    return b"," + dumps({"outcome": outcome, "outcomeDesc": f"HTTP {status}"})[1:-1]


def _agents(context: AccessContext, address: str | None) -> list[dict[str, Any]]:
    """The requestor (the user, else the client) with its network address; and the client app
    when a user is acting through it."""
    requestor: dict[str, Any] = {"who": who(context), "requestor": True}
    if address:
        requestor["network"] = {"address": address, "type": "2"}
    agents = [requestor]
    if context.fhir_user and context.client_id:
        client = {"system": CLIENT_SYSTEM, "value": context.client_id}
        agents.append(
            {"who": {"identifier": client, "display": context.client_id}, "requestor": False}
        )
    return agents


class EventWriter:
    """Serializes AuditEvents, keeping the serialized agents of recent (token, address) pairs
    (contexts are cached per token by auth/bearer.py, so the same one comes back)."""

    def __init__(self) -> None:
        self._agents: dict[tuple[AccessContext, str | None], bytes] = {}

    def event(
        self,
        context: AccessContext,
        address: str | None,
        interaction: Interaction,
        status: int,
        recorded: str,
        seen_patients: Iterable[str] | None = None,
        what: str | None = None,
    ) -> bytes:
        """The AuditEvent, its id included, as JSON. `what` is the resource the request acted
        on, when it is not the one its path names (the version a write produced)."""
        agents = self._agents.get((context, address))
        if agents is None:
            if len(self._agents) >= _AGENTS_KEPT:
                self._agents.clear()
            agents = self._agents[(context, address)] = dumps(_agents(context, address))
        if what is None and interaction.resource_type and interaction.resource_id:
            what = f"{interaction.resource_type}/{interaction.resource_id}"
        entities: list[dict[str, Any]] = []
        if what:
            entities.append({"what": {"reference": what}})
        if interaction.query:
            query = base64.b64encode(interaction.query).decode()
            entities.append({"type": _QUERY_TYPE, "query": query})
        for patient in patients(context, interaction, seen_patients):
            entities.append({"what": {"reference": patient}, "role": _PATIENT_ROLE})
        return b"".join(
            (
                _head(interaction.subtype, interaction.action),
                f',"id":"{_ID_PREFIX}-{next(_ID_SEQUENCE):x}","recorded":"{recorded}"'.encode(),
                _outcome(status),
                b',"agent":',
                agents,
                b',"entity":' + dumps(entities) if entities else b"",
                b"}",
            )
        )


# ---- security events: authentication, tokens, logins, consent, revocation ------------------------
# DICOM event types (http://dicom.nema.org/resources/ontology/DCM, listed in the R4 audit-event-type
# value set): 110114 User Authentication (subtypes 110122 Login, 110123 Logout), 110113 Security
# Alert (a token or credential that looks forged, a replayed code), 110137 User Security Attributes
# Changed (a revocation). A project subtype names what happened exactly, for search and reports.
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SECURITY_SUBTYPE_SYSTEM = "urn:fhirgoal:security-event"
USER_SYSTEM = "urn:fhirgoal:user"
_AUTHENTICATION = {"system": DCM, "code": "110114", "display": "User Authentication"}
_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
_ATTRIBUTES = {"system": DCM, "code": "110137", "display": "User Security Attributes Changed"}
_LOGIN = {"system": DCM, "code": "110122", "display": "Login"}
_LOGOUT = {"system": DCM, "code": "110123", "display": "Logout"}

# kind -> (type, DICOM subtype or None); the kind itself is the project subtype's code
SECURITY_KINDS: dict[str, tuple[dict[str, str], dict[str, str] | None]] = {
    "bearer-missing": (_AUTHENTICATION, _LOGIN),  # /fhir without a token
    "bearer-invalid": (_AUTHENTICATION, _LOGIN),  # expired, wrong audience, revoked ...
    "bearer-forged": (_ALERT, None),  # bad signature, `alg: none`, unknown key, malformed
    "token-issued": (_AUTHENTICATION, _LOGIN),  # an access token from /auth/token
    "token-refused": (_AUTHENTICATION, _LOGIN),  # an RFC 6749 5.2 error from /auth/token
    "code-reused": (_ALERT, None),  # RFC 6749 4.1.2: every token of the code is revoked
    "refresh-reused": (_ALERT, None),  # RFC 9700 4.14.2: the refresh family is revoked
    "login": (_AUTHENTICATION, _LOGIN),
    "login-failed": (_AUTHENTICATION, _LOGIN),
    "login-throttled": (_AUTHENTICATION, _LOGIN),
    "consent-approved": (_AUTHENTICATION, _LOGIN),
    "consent-denied": (_AUTHENTICATION, _LOGOUT),
    "csrf-refused": (_ALERT, None),
    # a picker choice or EHR launch outside the user's caseload (auth/caseload.py)
    "launch-refused": (_AUTHENTICATION, _LOGIN),
    "client-revoked": (_ATTRIBUTES, None),
    "user-revoked": (_ATTRIBUTES, None),
    "suppressed": (_ALERT, None),  # a summary of events the rate limit held back
}


class SecurityEvent(NamedTuple):
    """What an authentication or authorization-server event says. Never a password or a token:
    only who (user name, client id), from where, and what happened, in words."""

    kind: str  # a key of SECURITY_KINDS
    outcome: str  # "0" success, "4" minor failure (refused), "8" serious failure (forged, replay)
    description: str
    address: str | None = None
    client_id: str | None = None
    user: str | None = None  # a user name of the login page
    fhir_user: str | None = None  # "Practitioner/123"
    grant_type: str | None = None


def security_event(event: SecurityEvent, recorded: str, suppressed: int = 0) -> dict[str, Any]:
    """The AuditEvent of a security event; `suppressed` counts the events of the same kind from
    the same address that the rate limit held back since the last one recorded."""
    event_type, dicom = SECURITY_KINDS[event.kind]
    subtype = [{"system": SECURITY_SUBTYPE_SYSTEM, "code": event.kind}]
    if dicom is not None:
        subtype.insert(0, dicom)
    agents: list[dict[str, Any]] = []
    user: dict[str, Any] | None = None
    if event.fhir_user:
        user = {"reference": event.fhir_user}
        if event.user:
            user["display"] = event.user
    elif event.user:
        user = {"identifier": {"system": USER_SYSTEM, "value": event.user}, "display": event.user}
    client = (
        {
            "identifier": {"system": CLIENT_SYSTEM, "value": event.client_id},
            "display": event.client_id,
        }
        if event.client_id
        else None
    )
    requestor = user or client or {"display": "unidentified caller"}
    first: dict[str, Any] = {"who": requestor, "requestor": True}
    if event.address:
        first["network"] = {"address": event.address, "type": "2"}
    agents.append(first)
    if user is not None and client is not None:
        agents.append({"who": client, "requestor": False})
    description = event.description
    if suppressed:
        description += f" ({suppressed} similar events before this one were not recorded)"
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"{_ID_PREFIX}-{next(_ID_SEQUENCE):x}",
        "type": event_type,
        "subtype": subtype,
        "action": "E",
        "recorded": recorded,
        "outcome": event.outcome,
        "outcomeDesc": description,
        "agent": agents,
        "source": _SOURCE,
    }
    details = []
    if event.grant_type:
        details.append({"type": "grant_type", "valueString": event.grant_type})
    if suppressed:
        details.append({"type": "suppressed", "valueString": str(suppressed)})
    if details:
        resource["entity"] = [{"what": {"display": "authorization server"}, "detail": details}]
    return resource
