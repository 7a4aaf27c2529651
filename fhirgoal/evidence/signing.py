"""`Bundle.signature` of a document: a detached JWS over the document's canonical JSON.

R4 rules for a JSON digital signature (https://hl7.org/fhir/R4/datatypes.html#Signature, and
https://hl7.org/fhir/R4/signatures.html): `sigFormat` application/jose; `data` is the base64 of a
JWS (RFC 7515) whose payload is *detached* (RFC 7515 appendix F: the compact form with an empty
middle part, `header..signature`), the signed content being the resource in canonical JSON
(https://hl7.org/fhir/R4/json.html#canonical). The variant used is
`http://hl7.org/fhir/canonicalization/json#document`: everything in the Bundle except the root's
`id` and `meta` (and, necessarily, `signature` itself), so the document verifies wherever it is
copied, this server's stored copy (with the id and meta it gives it) included. `targetFormat`
names that canonicalization. The signature type is ASTM E1762 "Verification Signature"
(1.2.840.10065.1.12.1.5), as Da Vinci CDex asks of a system-level signature
(https://hl7.org/fhir/us/davinci-cdex/STU2/signatures.html); the signer is the server itself
(Device/fhirgoal). CDex also asks for an X.509 chain in `x5c`; this server has no certificate
authority to chain to, so its header names the key (`kid`) and the key set it is published in
(`jku`, evidence/keys.py) instead.

To verify: drop `signature`, `id` and `meta` from the Bundle, write it as canonical JSON, put its
base64url between the two dots of the decoded `data`, and check that JWS with the key `kid` of the
JWK Set at `jku`.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from fhirgoal.core.jsonio import dumps_canonical

CANONICALIZATION = "http://hl7.org/fhir/canonicalization/json#document"
TARGET_FORMAT = f"application/fhir+json;canonicalization={CANONICALIZATION}"
SIGNATURE_FORMAT = "application/jose"
VERIFICATION_SIGNATURE = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.5",
    "display": "Verification Signature",
}
EXCLUDED = ("id", "meta", "signature")  # the root Bundle's elements the signature leaves out


def signed_content(bundle: dict[str, Any]) -> bytes:
    """The bytes a document's signature covers (canonicalization json#document)."""
    return dumps_canonical({k: v for k, v in bundle.items() if k not in EXCLUDED})


def sign_document(
    bundle: dict[str, Any],
    key: RSAKey | ECKey,
    *,
    jku: str,
    who: str,
    when: str,
) -> dict[str, Any]:
    """`bundle` with its `signature`: by `who` (a reference), dated `when`."""
    alg = key.alg or "RS256"
    header = {"alg": alg, "kid": key.kid, "jku": jku}
    compact = jws.serialize_compact(header, signed_content(bundle), key, algorithms=[alg])
    protected, _, signature = compact.split(".")
    detached = f"{protected}..{signature}"
    signed = copy.copy(bundle)
    signed["signature"] = {
        "type": [VERIFICATION_SIGNATURE],
        "when": when,
        "who": {"reference": who},
        "targetFormat": TARGET_FORMAT,
        "sigFormat": SIGNATURE_FORMAT,
        "data": base64.b64encode(detached.encode("ascii")).decode("ascii"),
    }
    return signed
