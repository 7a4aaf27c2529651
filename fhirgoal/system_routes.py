"""Routes outside the resource types: the CapabilityStatement and the operational probes.

- `GET /fhir/metadata` (https://hl7.org/fhir/R4/http.html#capabilities), with the SMART security
  block naming its authorization server, its own or, in external mode, the EHR's
  (https://hl7.org/fhir/smart-app-launch/conformance.html);
- `GET /evidence/jwks`: the public keys that sign medical-necessity documents (evidence/keys.py),
  in every authorization mode and without a token, so that anyone holding a document can verify it;
- `GET /healthz`: the process is up; `GET /readyz`: the database answers a ping.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pymongo.errors import PyMongoError

from fhirgoal.config import Settings
from fhirgoal.core.jsonio import dumps
from fhirgoal.evidence.keys import JWKS_PATH, published_jwks
from fhirgoal.fhir.capability import build_capability
from fhirgoal.fhir.rest import FHIR_JSON, base_url, negotiate
from fhirgoal.fhir.service import FhirService

router = APIRouter()


@router.get("/fhir/metadata", summary="capabilities")
async def metadata(request: Request) -> Response:
    negotiate(request)
    base = base_url(request)
    service: FhirService = request.app.state.fhir
    settings: Settings = request.app.state.settings
    statement = build_capability(
        service.conformance,
        service.registry,
        base,
        service.operations,
        service.validator.profiles,
        service.resource_capabilities,
    )
    if settings.auth == "smart":
        from fhirgoal.auth.server import capability_security

        statement["rest"][0]["security"] = capability_security(base)
    elif settings.auth == "external":  # the EHR's authorization server (auth/external_discovery)
        external = request.app.state.external_authorization
        statement["rest"][0]["security"] = await external.security()
    return Response(dumps(statement), media_type=FHIR_JSON)


@router.get(JWKS_PATH, summary="document-signing keys (JWK Set)")
async def evidence_jwks(request: Request) -> Response:
    service: FhirService = request.app.state.fhir
    return Response(dumps(await published_jwks(service.database)), media_type="application/json")


@router.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    try:
        await request.app.state.fhir.database.command("ping")
    except (PyMongoError, AttributeError):
        return Response(b'{"status":"unavailable"}', status_code=503, media_type="application/json")
    return Response(b'{"status":"ready"}', media_type="application/json")
