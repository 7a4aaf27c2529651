"""The users' tokens held for outbox items (exchange/user_tokens.py): per item and connection,
the token gone at expiry (who it was for kept a while, for the audit), never in a repr."""

from __future__ import annotations

import time

from fhirgoal.core.delegation import UserCredential
from fhirgoal.exchange.connections import EhrConnection
from fhirgoal.exchange.user_tokens import FORGET_AFTER_SECONDS, UserTokens, accepts

EHR = "https://ehr.example/fhir"


def credential(expires_in: float, aud: tuple[str, ...] = (EHR,), iss: str = "https://as") -> UserCredential:  # fmt: skip
    return UserCredential(
        token="secret-token-text",
        issuer=iss,
        audiences=frozenset(aud),
        expires=time.time() + expires_in,
        subject="dr-lee",
        fhir_user=f"{EHR}/Practitioner/1",
    )


def connection(**fields: object) -> EhrConnection:
    return EhrConnection(
        name="clinic", base=EHR + "/", client_id="c", scopes="system/*.rs", alg="ES384",
        public_jwk={}, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_token_is_held_for_its_item_and_connection_only() -> None:
    tokens = UserTokens(margin_seconds=10)
    held = credential(300)
    tokens.hold("item-1", "clinic", held)
    assert tokens.get("item-1", "clinic") is held
    assert tokens.get("item-1", "other") is None
    assert tokens.get("item-2", "clinic") is None
    tokens.drop("item-1")
    assert tokens.get("item-1", "clinic") is None and len(tokens) == 0


def test_an_expired_token_is_dropped_and_who_it_was_for_is_kept_a_while() -> None:
    tokens = UserTokens(margin_seconds=10)
    tokens.hold("live", "clinic", credential(300))
    tokens.hold("lapsed", "clinic", credential(-1))
    tokens.hold("old", "clinic", credential(-FORGET_AFTER_SECONDS - 1))
    tokens.purge()
    assert tokens.get("live", "clinic").token == "secret-token-text"  # type: ignore[union-attr]
    lapsed = tokens.get("lapsed", "clinic")
    assert lapsed is not None and lapsed.token == "" and lapsed.subject == "dr-lee"
    assert tokens.get("old", "clinic") is None


def test_the_token_never_shows_in_a_repr() -> None:
    held = credential(300)
    assert "secret-token-text" not in repr(held)
    assert "dr-lee" in repr(held)


def test_an_ehr_accepts_a_token_naming_its_base_or_its_configured_issuer() -> None:
    assert accepts(connection(), credential(300))
    assert not accepts(connection(), credential(300, aud=("https://fhirgoal.example/fhir",)))
    assert not accepts(connection(user_tokens=False), credential(300))
    by_issuer = connection(user_token_issuer="https://as")
    assert accepts(by_issuer, credential(300, aud=("https://fhirgoal.example/fhir",)))
    assert not accepts(by_issuer, credential(300, aud=("https://x",), iss="https://other"))
