"""Bundle.signature verifies with the key set fetched over HTTP from the URL its JWS header
names, on the stored copy too; any change to the content breaks it. The canonical JSON is
written here independently of the server's (sorted keys, no whitespace, decimals as sent)."""

from __future__ import annotations

import base64
import copy
import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from tests.conftest import RunningServer
from tests.evidence.conftest import OPERATION, PERIOD, sections_by_title


def canonical(value: Any) -> str:
    """FHIR canonical JSON (json.html#canonical), by hand."""
    if isinstance(value, dict):
        items = (
            f"{json.dumps(k, ensure_ascii=False)}:{canonical(value[k])}" for k in sorted(value)
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


async def verify(bundle: dict[str, Any]) -> dict[str, Any]:
    """Verify a document's signature the way a payer would; returns the JWS header."""
    signature = bundle["signature"]
    assert signature["sigFormat"] == "application/jose"
    assert signature["targetFormat"].endswith(
        "canonicalization=http://hl7.org/fhir/canonicalization/json#document"
    )
    assert signature["type"][0]["code"] == "1.2.840.10065.1.12.1.5"
    protected, payload, signed = base64.b64decode(signature["data"]).decode().split(".")
    assert payload == ""  # detached
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    async with httpx.AsyncClient() as http:
        jwks = (await http.get(header["jku"])).json()
    key = KeySet.import_key_set(jwks).get_by_kid(header["kid"])
    content = {k: v for k, v in bundle.items() if k not in ("id", "meta", "signature")}
    encoded = base64.urlsafe_b64encode(canonical(content).encode()).rstrip(b"=").decode()
    registry = jws.JWSRegistry(algorithms=[header["alg"]])
    registry.max_payload_length = 64 * 1024 * 1024  # joserfc's default guards tokens, not documents
    jws.deserialize_compact(f"{protected}.{encoded}.{signed}", key, registry=registry)
    return header


def parsed(response: httpx.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


async def test_the_signature_verifies_with_the_published_keys_also_on_the_stored_copy(
    demo: RunningServer,
) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "start", "valueDate": PERIOD["start"]}, {"name": "end", "valueDate": PERIOD["end"]},
        {"name": "format", "valueCode": "document"}]}  # fmt: skip
    response = await demo.client.post(f"/Patient/demo-casey/{OPERATION}", json=body)
    assert response.status_code == 200, response.text
    answer = {p["name"]: p["resource"] for p in parsed(response)["parameter"]}
    header = await verify(answer["document"])
    root = demo.base.removesuffix("/fhir")
    assert header["jku"] == f"{root}/evidence/jwks" and header["alg"] == "RS256"

    stored = parsed(await demo.client.get(f"/Bundle/{answer['document']['id']}"))
    assert stored["meta"]["versionId"] and stored["identifier"] == answer["document"]["identifier"]
    await verify(stored)  # id and meta are outside what is signed
    reference = parsed(
        await demo.client.get(f"/DocumentReference/{answer['documentReference']['id']}")
    )
    assert reference["masterIdentifier"] == stored["identifier"]
    assert reference["content"][0]["attachment"]["url"] == f"Bundle/{stored['id']}"

    forged = copy.deepcopy(stored)
    ors = sections_by_title(forged)["Outcome Rating Scale (ORS)"]
    ors["text"]["div"] = ors["text"]["div"].replace("<td>2026-", "<td>2025-", 1)  # a date moved
    assert (
        ors["text"]["div"] != sections_by_title(stored)["Outcome Rating Scale (ORS)"]["text"]["div"]
    )
    with pytest.raises(BadSignatureError):
        await verify(forged)
    entry = next(e for e in forged["entry"] if e["resource"]["resourceType"] == "Observation")
    forged = copy.deepcopy(stored)
    observation = next(e for e in forged["entry"] if e["fullUrl"] == entry["fullUrl"])["resource"]
    observation["status"] = "entered-in-error"
    with pytest.raises(BadSignatureError):
        await verify(forged)


async def test_the_preview_is_signed_too_and_nothing_is_stored(demo: RunningServer) -> None:
    response = await demo.client.get(
        f"/Patient/demo-blair/{OPERATION}", params={**PERIOD, "format": "document"}
    )
    assert response.status_code == 200, response.text
    document = next(p["resource"] for p in parsed(response)["parameter"] if p["name"] == "document")
    await verify(document)
    missing = await demo.client.get(f"/Bundle/{document['id']}")
    assert missing.status_code == 404
