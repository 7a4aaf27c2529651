"""The SMART block of a CapabilityStatement, in either authorization mode.

SMART App Launch 2.2, conformance.html: the well-known document is the normative place for a
server's authorization endpoints; the `oauth-uris` extension on `CapabilityStatement.rest.security`
(http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris) is the older way, still
read by clients written for SMART 1.0, so fhirgoal publishes both. The extension's sub-extensions
are `authorize`, `token`, `introspect`, `revoke`, `register`, `manage` (valueUri each).
"""

from __future__ import annotations

from typing import Any

SMART_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
# sub-extension name -> the well-known document's field of the same endpoint
OAUTH_URIS = {
    "authorize": "authorization_endpoint",
    "token": "token_endpoint",
    "introspect": "introspection_endpoint",
    "revoke": "revocation_endpoint",
    "register": "registration_endpoint",
    "manage": "management_endpoint",
}


def capability_security(configuration: dict[str, Any]) -> dict[str, Any]:
    """`rest.security` naming the endpoints of a SMART configuration document (an empty or
    partial one gives the service coding with what it has)."""
    uris = [
        {"url": name, "valueUri": configuration[field]}
        for name, field in OAUTH_URIS.items()
        if isinstance(configuration.get(field), str)
    ]
    security: dict[str, Any] = {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
    }
    if uris:
        security["extension"] = [{"url": SMART_EXTENSION, "extension": uris}]
    return security
