"""SMART scopes, v1 and v2, parsed once into a typed value.

SMART App Launch 2.2, "Scopes and Launch Context":
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html

A resource scope is `<context>/<type>.<permissions>[?<search params>]`: context `patient`, `user`
or `system`; type a FHIR resource type or `*`; permissions v2 letters `c r u d s` in that order
(a subset, e.g. `rs`, `cruds`), or v1 `read` (= rs), `write` (= cud) or `*` (= cruds), per the
spec's v1 -> v2 mapping (#scopes-for-requesting-fhir-resources). v2 granular scopes narrow a scope
with search parameters (`patient/Observation.rs?category=survey`). Anything else in a scope string
(`openid`, `fhirUser`, `launch`, `launch/patient`, `offline_access`, ...) is kept as a plain word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl

from fhirgoal.core.errors import FhirgoalError

Context = Literal["patient", "user", "system"]
LETTERS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.([a-z*]+)(?:\?(.*))?$")
# Types that a `*` scope does not reach, neither in a token nor in a registration: the audit trail
# is for administrators who ask for it by name (system/AuditEvent.rs) through a client registered
# for it by name, not for every app holding patient/*.read or registered for system/*.rs.
NOT_IN_WILDCARD = frozenset({"AuditEvent"})


class ScopeError(FhirgoalError, ValueError):
    """A scope string that is neither a resource scope nor a plain word."""


@dataclass(frozen=True, slots=True)
class ResourceScope:
    context: Context
    resource_type: str  # a type or "*"
    letters: frozenset[str]
    params: tuple[tuple[str, str], ...] = ()
    text: str = ""

    def applies_to(self, resource_type: str, letter: str) -> bool:
        if letter not in self.letters:
            return False
        if self.resource_type == "*":
            return resource_type not in NOT_IN_WILDCARD
        return self.resource_type == resource_type

    def covers(self, other: ResourceScope) -> bool:
        """Whether granting `self` allows granting `other` (used to cap what a client may get).
        A `*` never covers a type in NOT_IN_WILDCARD: a registration must name it."""
        named = self.resource_type == other.resource_type
        return (
            self.context == other.context
            and (
                named or (self.resource_type == "*" and other.resource_type not in NOT_IN_WILDCARD)
            )
            and other.letters <= self.letters
            and (not self.params or self.params == other.params)
        )

    @property
    def v2(self) -> str:
        letters = "".join(c for c in LETTERS if c in self.letters)
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{self.context}/{self.resource_type}.{letters}" + (f"?{query}" if query else "")


def parse_scope(text: str) -> ResourceScope | None:
    """A resource scope, or None for a plain word such as `openid` or `launch/patient`."""
    m = _RESOURCE.match(text)
    if not m:
        if "/" in text and text.split("/", 1)[0] in ("patient", "user", "system"):
            raise ScopeError(f"malformed resource scope {text!r}")
        return None
    context, resource_type, permissions, query = m.groups()
    if permissions in _V1:
        letters = _V1[permissions]
    else:
        # v2: letters in the order c r u d s, each at most once
        if not permissions or "".join(c for c in LETTERS if c in permissions) != permissions:
            raise ScopeError(f"malformed permissions in scope {text!r}")
        letters = permissions
    params: tuple[tuple[str, str], ...] = ()
    if query is not None:
        try:
            params = tuple(parse_qsl(query, keep_blank_values=False, strict_parsing=True))
        except ValueError:
            raise ScopeError(f"malformed search parameters in scope {text!r}") from None
        if not params or any(not name for name, _ in params):
            raise ScopeError(f"empty search parameters in scope {text!r}")
    return ResourceScope(context, resource_type, frozenset(letters), params, text)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Scopes:
    """A whole `scope` value: resource scopes plus plain words, in request order."""

    resources: tuple[ResourceScope, ...]
    words: frozenset[str]
    text: str

    def has(self, word: str) -> bool:
        return word in self.words

    @property
    def contexts(self) -> frozenset[str]:
        return frozenset(s.context for s in self.resources)


@lru_cache(maxsize=4096)
def parse_scopes(text: str) -> Scopes:
    """Parse a space-separated scope value (cached: tokens repeat their scope string)."""
    resources: list[ResourceScope] = []
    words: set[str] = set()
    for item in text.split():
        scope = parse_scope(item)
        if scope is None:
            words.add(item)
        else:
            resources.append(scope)
    return Scopes(tuple(resources), frozenset(words), " ".join(text.split()))


def grantable(requested: Scopes, allowed: Scopes) -> Scopes:
    """The requested scopes that the allowed ones cover (plain words must be allowed verbatim),
    in the order they were requested."""
    kept = []
    for item in requested.text.split():
        scope = parse_scope(item)
        if scope is None:
            if item in allowed.words:
                kept.append(item)
        elif any(a.covers(scope) for a in allowed.resources):
            kept.append(item)
    return parse_scopes(" ".join(kept))


def names_unregistered(scopes: Scopes, allowed: Scopes) -> bool:
    """Whether a token's scopes name a NOT_IN_WILDCARD type that the client's registration does
    not name: such a token was not issued by this server's grant logic (auth/grants.py) and is
    refused (checked once per token, when it is verified)."""
    return any(
        s.resource_type in NOT_IN_WILDCARD and not any(a.covers(s) for a in allowed.resources)
        for s in scopes.resources
    )
