"""Settings from the environment (prefix FHIRGOAL_, plus the conventional MONGODB_URI)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Runtime configuration. Every field can be set as FHIRGOAL_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="FHIRGOAL_", extra="ignore")

    mongodb_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MONGODB_URI", "FHIRGOAL_MONGODB_URI")
    )
    db: str = "fhirgoal"
    # smart: the built-in authorization server; external: tokens of an EHR's authorization
    # server; off: no authorization, loopback callers only (for development).
    auth: Literal["off", "smart", "external"] = "smart"
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./fhirgoal-data")
    # Public base URL when behind a proxy; otherwise taken from each request.
    base_url: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    default_page_size: int = 20
    max_page_size: int = 500
    conformance_dir: Path = PROJECT_ROOT / "conformance"
    # Built-in Questionnaires, profiles, ValueSets and CodeSystems, loaded at start-up.
    profiles_dir: Path = PROJECT_ROOT / "profiles"
    # How many times an update without If-Match re-reads and retries after losing a race.
    write_retries: int = 5
    log_level: str = "INFO"
    # ORS/SRS interpretation (clinical/session_measures.py; PCOMS defaults).
    ors_cutoff_adult: Decimal = Decimal(25)
    ors_cutoff_adolescent: Decimal = Decimal(28)
    ors_cutoff_child: Decimal = Decimal(32)
    reliable_change: Decimal = Decimal(5)
    srs_alert_below: Decimal = Decimal(36)
    srs_drop: Decimal = Decimal(1)
    no_progress_sessions: int = 6
    # How often a running server finishes derived writes that a failure left pending (hooks.py).
    pending_sweep_seconds: float = 60.0
    # A directory of {questionnaire id}.json files ({linkId: licensed item text}) for licensees.
    instrument_text_dir: Path | None = None

    # ---- SMART (FHIRGOAL_AUTH=smart) ----
    access_token_seconds: int = 300
    refresh_token_seconds: int = 30 * 24 * 3600
    signing_alg: Literal["RS384", "ES384"] = "RS384"
    # ---- external authorization server (FHIRGOAL_AUTH=external) ----
    external_issuer: str | None = None
    external_jwks_url: str | None = None
    external_audience: str | None = None  # default: this server's FHIR base URL
    external_introspection_url: str | None = None
    external_client_id: str | None = None
    external_client_secret: str | None = None
    external_jwks_ttl: float = 300.0
    external_jwks_min_refetch: float = 30.0  # an unknown kid refetches at most this often
    external_introspection_cache_seconds: float = 60.0
    # ---- audit ----
    audit: bool = True
    audit_flush_seconds: float = 1.0
    audit_buffer: int = 10_000
    # audit events stored but not yet indexed past which indexing no longer waits for quiet time
    # (store/append_log.py): bounds how long an AuditEvent search can wait for the index
    audit_index_backlog: int = 10_000
    # ---- user access policy (issue 12) ----
    # Whom a practitioner's `user/` scopes and the login's patient picker reach (auth/caseload.py):
    # `caseload`, the patients whose CareTeam lists them or whose generalPractitioner is them,
    # their PractitionerRole or its Organization; `all`, every patient (small practices).
    user_access: Literal["all", "caseload"] = "caseload"
    # How long a computed caseload is used: a CareTeam, Patient or PractitionerRole change
    # reaches every token within this time (on every replica).
    caseload_refresh_seconds: float = 60.0
