"""A payer's attachment endpoint, played by a real HTTP server (a small Starlette app under
uvicorn) that authenticates fhirgoal the way a payer would with SMART Backend Services
(https://hl7.org/fhir/smart-app-launch/backend-services.html):

- `GET /.well-known/smart-configuration` names its token endpoint;
- `POST /token` takes a `client_credentials` grant with a `private_key_jwt` assertion and checks
  it against the public key set fhirgoal handed out for this connection (`payer add` writes
  it): signature (RS384/ES384), `iss` = `sub` = the registered client id, `aud` = this token
  endpoint, `exp` ahead and at most five minutes out, a `jti` never seen before; then issues an
  access token;
- `POST /$submit-attachment` takes only a token it issued, answers as planned (503, 429 with
  Retry-After, ...) and then 200, and keeps what it accepted by tracking number: a second
  submission under the same TrackingId is answered 200 and not accepted twice (CDex: the
  tracking number ties attachments to their claim).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fhirgoal.core.jsonio import loads
from tests.conftest import serve_app
from tests.exchange.receiver import Answer

CLIENT_ID = "fhirgoal-attachments"


@dataclass
class Submitted:
    status: int  # what the payer answered
    at: float  # time.monotonic()
    body: bytes
    headers: dict[str, str]

    @property
    def parameters(self) -> dict[str, Any]:
        parsed: dict[str, Any] = loads(self.body)
        return parsed


@dataclass
class PayerEndpoint:
    base: str = ""
    jwks: dict[str, Any] = field(default_factory=dict)  # fhirgoal's, as handed out
    plan: list[Answer] = field(default_factory=list)
    submissions: list[Submitted] = field(default_factory=list)
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # by tracking number
    refused_tokens: list[str] = field(default_factory=list)  # why a token request failed
    tokens: set[str] = field(default_factory=set)
    seen_jti: set[str] = field(default_factory=set)

    @property
    def token_url(self) -> str:
        return f"{self.base}/token"


def tracking_number(parameters: dict[str, Any]) -> str:
    found = [p["valueIdentifier"] for p in parameters["parameter"] if p["name"] == "TrackingId"]
    return f"{found[0].get('system', '')}|{found[0]['value']}"


@asynccontextmanager
async def payer_endpoint(plan: list[Answer] | None = None) -> AsyncIterator[PayerEndpoint]:
    state = PayerEndpoint(plan=list(plan or []))

    async def configuration(request: Request) -> Response:
        return JSONResponse({
            "token_endpoint": state.token_url,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "grant_types_supported": ["client_credentials"],
        })  # fmt: skip

    async def token(request: Request) -> Response:
        # application/x-www-form-urlencoded (RFC 6749 section 4.4.2)
        form = dict(parse_qsl((await request.body()).decode()))

        def refuse(why: str) -> Response:
            state.refused_tokens.append(why)
            return JSONResponse({"error": "invalid_client", "error_description": why}, 400)

        if form.get("grant_type") != "client_credentials":
            return refuse("grant_type")
        if form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return refuse("client_assertion_type")
        try:
            decoded = jwt.decode(
                str(form.get("client_assertion")),
                KeySet.import_key_set(state.jwks),  # type: ignore[arg-type]
                algorithms=["RS384", "ES384"],
            )
        except (JoseError, ValueError) as error:
            return refuse(f"signature: {error}")
        claims = decoded.claims
        moment = time.time()
        if claims.get("iss") != CLIENT_ID or claims.get("sub") != CLIENT_ID:
            return refuse("iss/sub")
        if claims.get("aud") != state.token_url:
            return refuse("aud")
        if not moment < float(claims.get("exp", 0)) <= moment + 300:
            return refuse("exp")
        if not claims.get("jti") or claims["jti"] in state.seen_jti:
            return refuse("jti")
        state.seen_jti.add(claims["jti"])
        issued = secrets.token_urlsafe(24)
        state.tokens.add(issued)
        return JSONResponse(
            {"access_token": issued, "token_type": "bearer", "expires_in": 300,
             "scope": form.get("scope")}
        )  # fmt: skip

    async def submit(request: Request) -> Response:
        body = await request.body()
        authorization = request.headers.get("authorization", "")
        if authorization.removeprefix("Bearer ") not in state.tokens:
            answer = Answer(401)
        else:
            answer = state.plan.pop(0) if state.plan else Answer()
        headers = {k.lower(): v for k, v in request.headers.items()}
        state.submissions.append(Submitted(answer.status, time.monotonic(), body, headers))
        if answer.status == 200:
            parameters = loads(body)
            state.accepted.setdefault(tracking_number(parameters), parameters)
        return Response(status_code=answer.status, headers=answer.headers)

    app = Starlette(routes=[
        Route("/.well-known/smart-configuration", configuration, methods=["GET"]),
        Route("/token", token, methods=["POST"]),
        Route("/$submit-attachment", submit, methods=["POST"]),
    ])  # fmt: skip
    server, task, port = await serve_app(app, lifespan="off")
    state.base = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        await task
