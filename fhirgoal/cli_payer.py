"""`fhirgoal payer add|list|remove|submit|status`: payer connections and Da Vinci CDex
submissions (issue 16; evidence/payers/).

A payer connection is what fhirgoal needs to post `$submit-attachment` to a payer as a SMART
Backend Services client (https://hl7.org/fhir/smart-app-launch/backend-services.html): like an
EHR connection (cli_ehr.py), plus the payer's Organization here and the identifiers the payer
knows the practice, the provider and its members by. `payer submit` records an unsolicited
submission (the evidence for a period, sent unasked) in the outbox and exits; a serving
fhirgoal delivers it (retried with backoff), and `payer status` shows how it went.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Annotated, Any, TypeVar

import typer
from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.cli_support import (
    DataDir,
    JwksOut,
    KeyAlg,
    KeyFile,
    admin,
    check_connection_options,
    connection_key,
    console,
    database,
    fail,
    hand_out_jwks,
    settings_from,
)
from fhirgoal.config import Settings
from fhirgoal.evidence.payers.connections import (
    DEFAULT_SCOPES,
    NPI,
    PayerConnection,
    PayerConnectionStore,
    parse_identifier,
)
from fhirgoal.exchange.backend_connections import BackendConnectionError

T = TypeVar("T")
STATUS_DEAD_SHOWN = 20  # the latest failures `payer status` looks through for dead submissions
payer_app = typer.Typer(
    help="Payer connections and CDex attachment submissions.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(payer_app, name="payer")


def _identifier(option: str, text: str | None, default_system: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    try:
        return parse_identifier(text, default_system)
    except BackendConnectionError as error:
        fail(f"{option}: {error}")


@payer_app.command("add")
def payer_add(
    name: Annotated[str, typer.Option("--name", help="The connection's name.")],
    base: Annotated[str, typer.Option("--base", help="The payer's FHIR base URL.")],
    client_id: Annotated[
        str, typer.Option("--client-id", help="The client id the payer registered fhirgoal under.")
    ],
    organization: Annotated[
        str,
        typer.Option("--organization", help="The payer's Organization id on this server."),
    ],
    key_file: KeyFile = None,
    alg: KeyAlg = "ES384",
    jwks_out: JwksOut = None,
    scopes: Annotated[
        str, typer.Option("--scopes", help="The system/ scopes to ask for, space-separated.")
    ] = DEFAULT_SCOPES,
    token_url: Annotated[
        str | None,
        typer.Option("--token-url", help="The token endpoint (else from smart-configuration)."),
    ] = None,
    submit_url: Annotated[
        str | None,
        typer.Option(
            "--submit-url", help="The $submit-attachment endpoint [BASE/$submit-attachment]."
        ),
    ] = None,
    payer_id: Annotated[
        str | None, typer.Option("--payer-id", help="PayerId at that endpoint (system|value).")
    ] = None,
    organization_id: Annotated[
        str | None,
        typer.Option(
            "--organization-id", help="This practice's id at the payer (NPI or system|value)."
        ),
    ] = None,
    provider_id: Annotated[
        str | None,
        typer.Option("--provider-id", help="The provider's id at the payer (NPI or system|value)."),
    ] = None,
    member_system: Annotated[
        str | None,
        typer.Option("--member-system", help="Identifier system of the payer's member ids."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a payer connection and hand out its public key set (JWKS)."""
    check_connection_options(name, base, scopes, token_url)
    if submit_url is not None:
        check_connection_options(name, submit_url, scopes)
    key, key_alg = connection_key(key_file, alg)
    settings = settings_from(data_dir=data_dir)
    connection = PayerConnection(
        name=name,
        base=base.rstrip("/"),
        client_id=client_id,
        scopes=" ".join(scopes.split()),
        alg=key_alg,
        public_jwk={},
        token_url=token_url,
        organization=f"Organization/{organization.removeprefix('Organization/')}",
        submit_url=submit_url,
        payer_id=_identifier("--payer-id", payer_id, None),
        organization_id=_identifier("--organization-id", organization_id, NPI),
        provider_id=_identifier("--provider-id", provider_id, NPI),
        member_system=member_system,
    )

    async def work(db: AsyncDatabase[dict[str, Any]]) -> dict[str, Any]:
        from fhirgoal.auth.keys import encryption_key

        store = PayerConnectionStore(db)
        await store.ensure_indexes()
        other = await store.for_organization(connection.organization)
        if other is not None:
            raise BackendConnectionError(
                f"the payer connection {other.name} is {connection.organization}'s already"
            )
        await store.add(
            connection, key, encryption_key(settings.key_encryption_key, settings.data_dir)
        )
        added = await store.get(name)
        assert added is not None
        return added.public_jwks()

    try:
        jwks = admin(data_dir, work)
    except BackendConnectionError as error:
        fail(str(error))
    hand_out_jwks(jwks, jwks_out)
    console.print(
        f"added payer connection {name} ({connection.organization}): register client "
        f"{client_id} at the payer with this JWKS (private_key_jwt, {key_alg}) and the scopes: "
        f"{connection.scopes}; submissions go to {connection.endpoint}"
    )


@payer_app.command("list")
def payer_list(data_dir: DataDir = None) -> None:
    """List the payer connections (never their private keys)."""

    async def work(db: AsyncDatabase[dict[str, Any]]) -> list[PayerConnection]:
        return await PayerConnectionStore(db).list()

    def ident(identifier: dict[str, str] | None) -> str:
        if not identifier:
            return "-"
        return f"{identifier.get('system', '')}|{identifier['value']}".lstrip("|")

    for c in admin(data_dir, work):
        typer.echo(
            f"{c.name}\t{c.organization}\t{c.endpoint}\tclient {c.client_id}\t"
            f"{c.alg} key {c.public_jwk.get('kid')}\tpayer {ident(c.payer_id)}\t"
            f"organization {ident(c.organization_id)}\tprovider {ident(c.provider_id)}\t"
            f"scopes {c.scopes}"
        )


@payer_app.command("remove")
def payer_remove(
    name: Annotated[str, typer.Argument(help="The connection's name.")], data_dir: DataDir = None
) -> None:
    """Remove a payer connection. Its undelivered submissions are not sent: each is parked as
    dead, with the reason, when its turn comes (`payer status`)."""
    from fhirgoal.store.outbox import OutboxStore

    async def work(db: AsyncDatabase[dict[str, Any]]) -> int | None:
        store = PayerConnectionStore(db)
        connection = await store.get(name)
        if connection is None or not await store.remove(name):
            return None
        report = await OutboxStore(db).destination_report(connection.dest)
        return int(report["pending"] + report["delivering"])

    waiting = admin(data_dir, work)
    if waiting is None:
        fail(f"no payer connection {name}")
    typer.echo(f"removed payer connection {name} ({waiting} undelivered submission(s) will not go)")


async def _with_service(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(service)` with the service built as a server builds it."""
    from fhirgoal.bootstrap import build_service
    from fhirgoal.store.mongo import connect

    assert settings.mongodb_uri
    client = connect(settings.mongodb_uri, timeout=10.0)
    try:
        return await work(await build_service(settings, client))
    finally:
        await client.close()


@payer_app.command("submit")
def payer_submit(
    payer: Annotated[str, typer.Option("--payer", help="The payer connection's name.")],
    patient: Annotated[str, typer.Option("--patient", help="The client's Patient id.")],
    start: Annotated[str, typer.Option("--start", help="First day of the period (YYYY-MM-DD).")],
    end: Annotated[
        str | None, typer.Option("--end", help="Last day of the period [today].")
    ] = None,
    claim: Annotated[
        str | None, typer.Option("--claim", help="The claim's number (the tracking number).")
    ] = None,
    preauthorization: Annotated[
        str | None,
        typer.Option("--preauthorization", help="The prior authorization's number instead."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Send a payer the evidence of medical necessity unasked (CDex unsolicited attachment):
    recorded with its submission in the outbox, delivered by the server."""
    from fhirgoal.core.access import UNRESTRICTED
    from fhirgoal.core.errors import FhirError
    from fhirgoal.evidence.keys import DocumentKeys
    from fhirgoal.evidence.operation import MedicalNecessity
    from fhirgoal.evidence.payers.unsolicited import UnsolicitedRequest, submit_unsolicited

    try:
        first = date.fromisoformat(start)
        last = date.fromisoformat(end) if end else date.today()
    except ValueError:
        fail("--start and --end are dates YYYY-MM-DD")
    ask = UnsolicitedRequest(patient, payer, first, last, claim, preauthorization)

    async def work(service: Any) -> dict[str, Any]:
        evidence = MedicalNecessity(DocumentKeys(service.settings, service.database))
        base = service.settings.public_fhir_base()
        return await submit_unsolicited(service, evidence, UNRESTRICTED, base, ask)

    with database(settings_from(data_dir=data_dir)) as (settings, _):
        try:
            communication = asyncio.run(_with_service(settings, work))
        except FhirError as error:
            details = "; ".join(i.diagnostics for i in error.issues) or str(error)
            fail(details)
    tracking = communication["identifier"][0]["value"]
    console.print(
        f"submission to payer {payer} recorded (Communication/{communication['id']}, tracking "
        f"number {tracking}); the server delivers it: fhirgoal payer status",
        soft_wrap=True,
    )


@payer_app.command("status")
def payer_status(data_dir: DataDir = None) -> None:
    """Per payer connection: submissions pending, delivered, failing and dead, and the last
    error; then the dead ones with their reasons."""
    from rich.table import Table

    from fhirgoal.store.outbox import DEAD, OutboxStore

    async def work(db: AsyncDatabase[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
        outbox = OutboxStore(db)
        rows = []
        for connection in await PayerConnectionStore(db).list():
            rows.append((connection.name, await outbox.destination_report(connection.dest)))
        # dead ones of every payer connection, removed ones included
        latest = (await outbox.status(errors=STATUS_DEAD_SHOWN))["errors"]
        dead = [doc for doc in latest
                if doc["state"] == DEAD and doc["dest"].startswith(f"{PayerConnection.kind}/")]  # fmt: skip
        return rows, dead

    rows, dead = admin(data_dir, work)
    table = Table("payer", "pending", "delivered", "failing", "dead")
    for name, report in rows:
        table.add_row(
            name,
            str(report["pending"] + report["delivering"]),
            str(report["delivered"]),
            str(report["failing"]),
            str(report["dead"]),
        )
    console.print(table)
    for name, report in rows:
        last = report["last_error"]
        if last:
            console.print(f"{name}: last error ({last['ref']}): {last['error']}", soft_wrap=True)
    for doc in dead:
        console.print(
            f"dead: {doc['dest'].removeprefix('PayerConnection/')} {doc['ref']}: {doc['error']}",
            soft_wrap=True,
        )
    if not rows and not dead:
        console.print("no payer connections (fhirgoal payer add)")
