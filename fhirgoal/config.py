"""Settings from the environment (prefix FHIRGOAL_, plus the conventional MONGODB_URI).

The built-in data ships inside the package, as package data: fhirgoal/conformance (the vendored R4
definitions), fhirgoal/profiles (the built-in Questionnaires, profiles, ValueSets, CodeSystems) and
fhirgoal/mappings (the EHR mappings, exchange/mapping.py).
They are found through the installed package (importlib.resources), so an editable checkout, a
wheel installed into site-packages and the Docker image all read the same files from any working
directory. FHIRGOAL_CONFORMANCE_DIR and FHIRGOAL_PROFILES_DIR override them; a missing or empty
directory stops start-up (fhir/conformance.py, fhir/catalog.py).
"""

from __future__ import annotations

from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _package_data(name: str) -> Path:
    """A data directory shipped inside the fhirgoal package (a real directory: the package is
    installed unzipped, as pip does)."""
    return Path(str(files("fhirgoal").joinpath(name)))


BUILTIN_CONFORMANCE_DIR = _package_data("conformance")
BUILTIN_PROFILES_DIR = _package_data("profiles")
# The shipped mappings (us-core, pco, example-ehr); `mappings/` at the repository root links here.
BUILTIN_MAPPINGS_DIR = _package_data("mappings")


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
    # The vendored R4 definitions and custom SearchParameters (scripts/vendor_conformance.py).
    conformance_dir: Path = BUILTIN_CONFORMANCE_DIR
    # Built-in Questionnaires, profiles, ValueSets and CodeSystems, loaded at start-up.
    profiles_dir: Path = BUILTIN_PROFILES_DIR
    # How many times an update without If-Match re-reads and retries after losing a race.
    write_retries: int = 10
    log_level: str = "INFO"
    # ORS/SRS interpretation: unset, the published PCOMS value. The values (and their checks) live
    # in one place, `Cutoffs` in clinical/session_measures.py; clinical/session_alerts.py
    # `cutoffs_from` builds it from these overrides.
    ors_cutoff_adult: Decimal | None = None
    ors_cutoff_adolescent: Decimal | None = None
    ors_cutoff_child: Decimal | None = None
    reliable_change: Decimal | None = None
    srs_alert_below: Decimal | None = None
    srs_drop: Decimal | None = None
    no_progress_sessions: int | None = None
    # How often a running server finishes derived writes that a failure left pending (hooks.py).
    pending_sweep_seconds: float = 60.0
    # A directory of {questionnaire id}.json files ({linkId: licensed item text}) for licensees.
    instrument_text_dir: Path | None = None

    # ---- SMART (FHIRGOAL_AUTH=smart) ----
    access_token_seconds: int = 300
    refresh_token_seconds: int = 30 * 24 * 3600
    signing_alg: Literal["RS384", "ES384"] = "RS384"
    # Space-separated FHIR bases of other servers that accept this server's tokens (a fhirgoal
    # in FHIRGOAL_AUTH=external mode naming this one as its issuer): an app may ask for one of
    # them as `aud`, and its tokens then name that server as audience, so this one refuses them.
    token_audiences: str = ""
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
    # What /fhir/.well-known/smart-configuration publishes in external mode
    # (auth/external_discovery.py): discovered from the issuer's own well-known documents and
    # kept this long, or given here (both URLs set: nothing is discovered); settings win.
    external_discovery_seconds: float = 300.0
    external_authorize_url: str | None = None
    external_token_url: str | None = None
    external_capabilities: str = ""  # space-separated SMART capabilities
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

    # ---- resilience (issue 12) ----
    # A request's headers must arrive within this many seconds of its first byte, and its body
    # within this many seconds of its headers, else 408 and the connection closes (serving.py).
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    # How long SIGTERM waits for requests in flight before closing their connections.
    shutdown_grace_seconds: int = 5
    # How long a request waits for an unreachable database before its 503, and for the answer to
    # one database command (a hung database) before the same (store/mongo.py).
    db_timeout_seconds: float = 2.0
    db_socket_timeout_seconds: float = 10.0
    # Acknowledge writes only once journaled (j: true). false is for measurements only (bench/),
    # like FHIRGOAL_AUDIT=false: a crash then loses acknowledged writes.
    db_journal: bool = True
    # The embedded database is restarted this many times within db_restart_window_seconds after
    # it dies; one more death and the server exits non-zero for its supervisor (store/embedded.py).
    db_restarts: int = 5
    db_restart_window_seconds: float = 300.0
    # The pause before a restart, doubled with each death within the window.
    db_restart_backoff_seconds: float = 0.5

    # ---- input limits (issue 12) ----
    # Deepest nesting of arrays and objects in a JSON body (resources, JSON Patch, Parameters).
    # The deepest R4 spec example nests 22 levels; refused with 400 before any recursive parsing.
    max_json_depth: int = Field(default=100, ge=8, le=200)
    # Search (and conditional-interaction) parameters per request, each name=value pair counting.
    max_search_params: int = Field(default=50, ge=1)
    # Comma-separated (OR) values in one search parameter.
    max_search_values: int = Field(default=100, ge=1)
    # Characters in one search value (each of the comma-separated values) or parameter name.
    max_search_value_length: int = Field(default=1024, ge=64)
    # Keys in one `_sort`.
    max_sort_keys: int = Field(default=5, ge=1)
    # Operations in one JSON Patch or FHIRPath Patch body (what JSON Patch `copy` operations add
    # is bounded by max_body_bytes).
    max_patch_operations: int = Field(default=100, ge=1)

    # ---- batch and transaction Bundles (issue 13, fhir/transaction.py) ----
    # Entries in one batch or transaction Bundle (413 beyond), and the size of its body (413
    # beyond; single resources keep max_body_bytes).
    max_bundle_entries: int = Field(default=1000, ge=1)
    max_bundle_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Runs of a transaction that conflicts with concurrent writes before it is answered 409.
    transaction_attempts: int = Field(default=5, ge=1)

    # ---- auth hardening (issue 12) ----
    # Security events (failed tokens, token endpoint, logins, consent, revocations) stored per
    # (kind, source address): `burst` at once, then this many a minute; a kind for all addresses
    # together at most ten times that (auth/audit.py SecurityTrail).
    security_audit_burst: int = 20
    security_audit_per_minute: float = 6.0
    # Login throttling: after this many failed logins within the window, for one user name or
    # from one address, further attempts are refused (429, Retry-After) until the window passes.
    login_max_failures_per_user: int = 5
    login_max_failures_per_address: int = 20
    login_failure_window_seconds: int = 900
    # How often a replica rereads revocations made elsewhere (another replica, the CLI) and drops
    # the verified tokens it keeps in memory that they concern; on the replica that revokes, the
    # effect is immediate.
    revocation_check_seconds: float = 5.0
    # Encrypts the signing keys at rest (AES-256-GCM): 32 bytes, base64 or base64url. Unset: a key
    # file `signing-keys.key` (0600) generated in data_dir. Every replica needs the same key.
    key_encryption_key: str | None = Field(default=None, repr=False)

    # ---- Bulk Data export (issue 16) ----
    # How long an export's files stay downloadable after it completes (the manifest's Expires);
    # expired files and jobs are removed by the database (TTL indexes).
    export_retention_seconds: int = Field(default=86_400, ge=60)
    # A running export renews its lease this often at the least; a job whose lease lapses (its
    # process died) is taken over and run again from the start.
    export_lease_seconds: float = Field(default=60.0, ge=5.0)
    # Each resource type's output is split into NDJSON files of at most this many resources.
    export_file_lines: int = Field(default=100_000, ge=1)

    # ---- the outbox and its delivery (issue 15: store/outbox.py, exchange/delivery.py) ----
    # Run the delivery worker in each serving process (several replicas share the work by leases).
    outbox_worker: bool = True
    # How long a worker holds an item it is delivering; an item whose worker died is taken again
    # once its lease lapses (longer than a delivery's timeout).
    outbox_lease_seconds: float = Field(default=30.0, ge=1.0)
    # The per-request timeout of a delivery (connect, send, wait for the answer).
    outbox_timeout_seconds: float = Field(default=10.0, gt=0)
    # Exponential backoff with full jitter: the n-th retry waits a random time up to
    # base * 2**n, at most the maximum; a Retry-After (429, 503) is honoured up to the maximum.
    outbox_backoff_base_seconds: float = Field(default=1.0, gt=0)
    outbox_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    # An item still undelivered this long after it was recorded is parked as a dead letter.
    outbox_dead_after_seconds: float = Field(default=7 * 86_400, gt=0)
    # How often a worker looks for due items when nothing wakes it (another replica's writes,
    # retries falling due).
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    # Deliveries in flight at once per worker.
    outbox_concurrency: int = Field(default=8, ge=1)
    # Delivered and void items are forgotten after this long (dead letters are kept).
    outbox_retention_seconds: float = Field(default=7 * 86_400, gt=0)
    # A Subscription whose deliveries failed this many times in a row is set to status `error`
    # (with the last error); it keeps being tried, and turns `active` again on a success.
    subscription_error_after: int = Field(default=3, ge=1)
    # How often a replica rereads the Subscriptions (changes made on another replica).
    subscription_refresh_seconds: float = Field(default=5.0, gt=0)

    # ---- EHR sync (issue 15: exchange/ehr_*.py, `fhirgoal ehr|sync`) ----
    # How often a serving process pulls every EHR connection (exchange/ehr_inbound.py); 0: never
    # (pulls then run only with `fhirgoal sync run`). Outbound delivery is the outbox worker's.
    sync_pull_seconds: float = Field(default=300.0, ge=0)
    # A pull asks for what changed since the latest meta.lastUpdated the previous one saw, minus
    # this margin: a version stamped before the previous pull but committed after it is not
    # missed (what is fetched again changes nothing).
    sync_pull_overlap_seconds: float = Field(default=5.0, ge=0)
    # Resources per page of a pull's searches (`_count`).
    sync_page_size: int = Field(default=200, ge=1, le=1000)
    # Patients whose pulled resources are written at once (one patient's stay in order).
    sync_pull_concurrency: int = Field(default=8, ge=1)
    # A connection with a Bulk export setting (`ehr add --bulk`) pulls a group of patients (the
    # newly followed ones, or the others) of at least this many through one export instead of
    # searches; an export not finished within sync_bulk_wait_seconds fails the pull.
    sync_bulk_min_patients: int = Field(default=25, ge=1)
    sync_bulk_wait_seconds: float = Field(default=900.0, gt=0)
    # Push in (exchange/ehr_subscribe.py, ehr_push.py): how often a serving process checks the
    # Subscriptions of each connection marked `subscribe` at its EHR (missing or off: made
    # again; the followed patients changed: their filters updated) and links new patients.
    sync_subscribe_check_seconds: float = Field(default=300.0, gt=0)
    # The heartbeat period asked of the EHR (backport-heartbeat-period); 0: none. A heartbeat
    # whose event count is ahead of what arrived shows a lost notification (a pull follows).
    sync_push_heartbeat_seconds: int = Field(default=600, ge=0)
    # Where the EHR reaches fhirgoal (scheme://host[:port]); unset: the public origin of
    # FHIRGOAL_BASE_URL. The notification endpoint is <this>/sync/notify/<connection>.
    sync_notify_base_url: str | None = None
    # The largest notification body accepted (413 beyond).
    sync_notify_max_bytes: int = Field(default=1024 * 1024, ge=1024)
    # FHIRGOAL_AUTH=external: what a clinician's request writes goes to an EHR with the
    # clinician's own token while it is valid, when that EHR accepts the token (its `aud`
    # names the EHR's base, or the connection names its issuer), so the EHR attributes the
    # write to them; else, and for what rules derive, with the Backend Services token
    # (exchange/user_tokens.py). On by default: the token goes only to a server it was issued
    # for, so nothing is handed to anyone who would not already take it from the app.
    ehr_user_tokens: bool = True
    # A user's token is not used when it expires within this many seconds.
    ehr_user_token_margin_seconds: float = Field(default=10.0, ge=0)

    # ---- the clinician web app (/app, fhirgoal/webapp) ----
    # Served under /app by every `fhirgoal serve`; a SMART app that reaches FHIR servers only
    # over HTTP with the tokens it obtains, this one's included.
    app_enabled: bool = True
    # The app's OAuth client id; with FHIRGOAL_AUTH=smart it is registered at start-up as a
    # public client (PKCE) of the built-in authorization server (auth/builtin_app.py).
    app_client_id: str = "fhirgoal-app"
    # The app's own credentials at an authorization server that registered it as a confidential
    # client (webapp/client_auth.py): a client secret (client_secret_basic), or a private key
    # file, RSA or EC P-384, as a JWK, JWKS or PEM (private_key_jwt; its public key is published
    # at /app/jwks). Neither: a public client (PKCE only). Not both.
    app_client_secret: str | None = Field(default=None, repr=False)
    app_private_key_file: Path | None = None
    # Where authorization servers send the browser back; default <public origin>/app/callback.
    app_redirect_uri: str | None = None
    # The FHIR server a standalone launch (GET /app/) signs in to; default this server's base.
    app_default_iss: str | None = None
    # Space-separated FHIR base URLs (besides this server's) the app may be launched from
    # (`iss`): the app fetches discovery documents only from these (no request forgery through
    # a crafted launch link).
    app_issuers: str = ""
    # Space-separated origins of EHRs allowed to show the app in a frame (CSP frame-ancestors,
    # beside 'self').
    app_frame_ancestors: str = ""
    # How long a signed-in browser session lasts without use.
    app_session_seconds: int = 8 * 3600

    @model_validator(mode="after")
    def _lease_outlasts_a_delivery(self) -> Settings:
        # a delivery is started only while its lease outlasts the request's timeout
        # (exchange/delivery.py): a shorter lease would never deliver anything
        if self.outbox_lease_seconds <= self.outbox_timeout_seconds:
            raise ValueError(
                "FHIRGOAL_OUTBOX_LEASE_SECONDS must be longer than FHIRGOAL_OUTBOX_TIMEOUT_SECONDS"
            )
        return self

    def public_fhir_base(self) -> str:
        """The FHIR base URL every token's iss/aud, the discovery document and Location headers
        name: FHIRGOAL_BASE_URL, else the serve address. Never a request's Host header."""
        if self.base_url:
            return self.base_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):  # all interfaces: no name to give; see README
            host = "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/fhir"

    def public_origin(self) -> str:
        """scheme://host[:port] (plus any path prefix before /fhir) of the public base URL."""
        base = self.public_fhir_base()
        return base[: -len("/fhir")] if base.endswith("/fhir") else base

    def app_allowed_issuers(self) -> set[str]:
        """The FHIR bases the web app may be launched from (`iss`)."""
        return {self.public_fhir_base(), *(i.rstrip("/") for i in self.app_issuers.split())}

    def token_audience_set(self) -> set[str]:
        """The `aud` values the built-in authorization server issues tokens for."""
        return {self.public_fhir_base(), *(a.rstrip("/") for a in self.token_audiences.split())}

    def app_callback_url(self) -> str:
        """The web app's OAuth redirect URI (FHIRGOAL_APP_REDIRECT_URI, else derived)."""
        return self.app_redirect_uri or f"{self.public_origin()}/app/callback"

    def app_jwks_url(self) -> str:
        """Where the web app publishes its public keys (private_key_jwt)."""
        return f"{self.public_origin()}/app/jwks"
