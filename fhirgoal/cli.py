"""`fhirgoal` command line: serve the API, load demo data, administer clients, users and keys.

With no MONGODB_URI the commands start the embedded database (SecantusDB) on `--data-dir` and stop
it when they finish; a database already running on that data dir is found and reused
(cli_support.py). The EHR commands (`ehr`, `sync`) are in cli_ehr.py, the payer commands in
cli_payer.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.app import create_app
from fhirgoal.auth.loopback import is_loopback
from fhirgoal.cli_ehr import register as register_ehr_commands
from fhirgoal.cli_mapping import mapping_app
from fhirgoal.cli_payer import register as register_payer_commands
from fhirgoal.cli_support import DataDir, console
from fhirgoal.cli_support import admin as _admin
from fhirgoal.cli_support import database as _database
from fhirgoal.cli_support import fail as _fail
from fhirgoal.cli_support import settings_from as _settings
from fhirgoal.config import Settings
from fhirgoal.serving import Server, server_config
from fhirgoal.store.outbox import STATES

app = typer.Typer(
    help="fhirgoal: a FHIR R4 server for goals, GAS and session measures.", no_args_is_help=True
)
register_ehr_commands(app)  # `fhirgoal ehr ...` and `fhirgoal sync ...` (cli_ehr.py)
register_payer_commands(app)  # `fhirgoal payer ...` (cli_payer.py)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [FHIRGOAL_HOST, 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [FHIRGOAL_PORT, 8080].")] = None,
    data_dir: DataDir = None,
    demo: Annotated[bool, typer.Option("--demo", help="Load the demo data set first.")] = False,
) -> None:
    """Serve the FHIR API at http://HOST:PORT/fhir (with /healthz and /readyz)."""
    settings = _settings(host=host, port=port, data_dir=data_dir)
    host, port = settings.host, settings.port
    if settings.auth == "off" and not is_loopback(host):
        console.print("[red]error:[/red] FHIRGOAL_AUTH=off is only allowed on a loopback interface")
        raise typer.Exit(2)
    if settings.auth == "off":
        console.print(
            "[yellow]warning:[/yellow] authorization is off (FHIRGOAL_AUTH=off): loopback only"
        )
    # When the database keeps dying, stop serving: uvicorn takes SIGTERM as a graceful stop, and
    # the exit status below tells this process's own supervisor.
    with _database(settings, on_give_up=lambda: os.kill(os.getpid(), signal.SIGTERM)) as (
        settings,
        embedded,
    ):
        if demo:
            _load_demo(settings)
        application = create_app(settings)
        base = settings.public_fhir_base()  # the issuer and every URL the server gives out
        console.print(f"FHIR base: {base}")
        if settings.auth == "smart":
            console.print(
                f"SMART: {base}/.well-known/smart-configuration "
                "(register apps with `fhirgoal client register`, users with `fhirgoal user add`)"
            )
            if demo and settings.app_enabled:
                _print_demo_access(settings)
            if not settings.base_url and host in ("0.0.0.0", "::", ""):
                console.print(
                    "[yellow]warning:[/yellow] serving on all interfaces without "
                    "FHIRGOAL_BASE_URL: tokens and discovery name localhost; set "
                    "FHIRGOAL_BASE_URL to the URL other machines use"
                )
        config = server_config(
            application, settings, host=host, port=port, log_level=settings.log_level.lower()
        )
        Server(config).run()
    if embedded is not None and embedded.failed:
        console.print("[red]error:[/red] the embedded database kept dying; see embedded.log")
        raise typer.Exit(1)


@app.command("demo")
def demo_command(data_dir: DataDir = None) -> None:
    """Load the demo data set: patients with care plans, goals and a dozen sessions of ratings."""
    with _database(_settings(data_dir=data_dir)) as (settings, _):
        _load_demo(settings)


@app.command("reindex")
def reindex_command(
    data_dir: DataDir = None,
    resource_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only these resource types (repeatable).")
    ] = None,
) -> None:
    """Recompute the search index of every stored resource (e.g. after adding a SearchParameter)."""
    with _database(_settings(data_dir=data_dir)) as (settings, _):
        count = asyncio.run(_reindex(settings, resource_type or []))
    console.print(f"reindexed {count} resources")


async def _reindex(settings: Settings, only: list[str]) -> int:
    from rich.progress import Progress

    from fhirgoal.bootstrap import build_service
    from fhirgoal.fhir.reindex import reindex
    from fhirgoal.store.mongo import connect

    assert settings.mongodb_uri
    client = connect(settings.mongodb_uri, timeout=10.0)
    try:
        service = await build_service(settings, client)
        unknown = [t for t in only if not service.conformance.is_stored(t)]
        if unknown:
            console.print(f"[red]error:[/red] unknown resource type(s): {', '.join(unknown)}")
            raise typer.Exit(2)
        types = only or list(service.conformance.stored_types)
        with Progress(console=console) as progress:
            task = progress.add_task("reindex", total=None)

            def on_type(rt: str, total: int) -> None:
                progress.update(task, description=f"reindex {rt}", total=total, completed=0)

            def on_progress(done: int) -> None:
                progress.advance(task, done)

            return await reindex(service, types, on_type, on_progress)
    finally:
        await client.close()


# ---- the outbox (store/outbox.py, exchange/delivery.py) ----------------------------------------
outbox_app = typer.Typer(help="The outbox of outbound work (notifications).", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
app.add_typer(mapping_app, name="mapping")


@outbox_app.command("status")
def outbox_status(data_dir: DataDir = None) -> None:
    """Items by destination and state, and the latest errors."""
    with _database(_settings(data_dir=data_dir)) as (settings, _):
        report = asyncio.run(_outbox(settings, run=False))
    from rich.table import Table

    table = Table("destination", *STATES)
    for dest, counts in sorted(report["destinations"].items()):
        table.add_row(dest, *(str(counts.get(state, 0)) for state in STATES))
    console.print(table)
    for row in report["errors"]:
        console.print(
            f"{row['state']} {row['dest']} {row['ref']}/_history/{row['vid']} "
            f"after {row.get('attempts', 0)} attempt(s): {row['error']}"
        )


@outbox_app.command("run")
def outbox_run(data_dir: DataDir = None) -> None:
    """Deliver every item due now, once, and exit."""
    with _database(_settings(data_dir=data_dir)) as (settings, _):
        report = asyncio.run(_outbox(settings, run=True))
    console.print(f"{report['attempts']} delivery attempt(s)")


async def _outbox(settings: Settings, run: bool) -> dict[str, Any]:
    from fhirgoal.bootstrap import build_service
    from fhirgoal.exchange.delivery import DeliveryWorker
    from fhirgoal.store.mongo import connect

    assert settings.mongodb_uri
    client = connect(settings.mongodb_uri, timeout=10.0)
    try:
        service = await build_service(settings, client)
        if not run:
            return await service.outbox.store.status()
        worker = DeliveryWorker(service.outbox, settings)
        try:
            return {"attempts": await worker.run_once()}
        finally:
            await worker.stop()
    finally:
        await client.close()


# ---- administration of the built-in authorization server -----------------------------------------
client_app = typer.Typer(
    help="OAuth clients of the built-in authorization server.", no_args_is_help=True
)
user_app = typer.Typer(
    help="Practitioner logins of the built-in authorization server.", no_args_is_help=True
)
key_app = typer.Typer(help="The authorization server's signing keys.", no_args_is_help=True)
app.add_typer(client_app, name="client")
app.add_typer(user_app, name="user")
app.add_typer(key_app, name="key")


@client_app.command("register")
def client_register(
    client_id: Annotated[str, typer.Option("--client-id", help="The client_id.")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Scopes it may be granted, space-separated.")
    ],
    jwks_file: Annotated[
        Path | None, typer.Option("--jwks-file", help="Its public keys (JWKS) for private_key_jwt.")
    ] = None,
    jwks_url: Annotated[
        str | None, typer.Option("--jwks-url", help="Where its public keys (JWKS) are published.")
    ] = None,
    redirect_uri: Annotated[
        list[str] | None, typer.Option("--redirect-uri", help="Allowed redirect URI (repeatable).")
    ] = None,
    secret: Annotated[
        bool,
        typer.Option(
            "--secret",
            help="Generate a client secret (client_secret_basic), printed once.",
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Register a client: confidential (JWKS, or a generated secret) or public (redirect URIs)."""
    import json

    from fhirgoal.auth.clients import (
        Client,
        ClientExists,
        ClientRegistry,
        new_client_secret,
        secret_digest,
    )
    from fhirgoal.auth.scopes import ScopeError, parse_scopes

    if jwks_file and jwks_url:
        _fail("give --jwks-file or --jwks-url, not both")
    if secret and (jwks_file or jwks_url):
        _fail("a client authenticates one way: give --secret or a JWKS, not both")
    if not (jwks_file or jwks_url or redirect_uri):
        _fail("give --jwks-file, --jwks-url or at least one --redirect-uri")
    try:
        parse_scopes(scopes)
    except ScopeError as exc:
        _fail(str(exc))
    jwks = None
    if jwks_file:
        try:
            jwks = json.loads(jwks_file.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {jwks_file}: {exc}")
    generated = new_client_secret() if secret else None
    client = Client(client_id, scopes, jwks, jwks_url, list(redirect_uri or []),
                    secret_hash=secret_digest(generated) if generated else None)  # fmt: skip

    async def work(db: AsyncDatabase[dict[str, Any]]) -> None:
        await ClientRegistry(db).register(client)

    try:
        _admin(data_dir, work)
    except ClientExists:
        _fail(f"client {client_id} is already registered")
    except ValueError as exc:  # an unusable JWKS
        _fail(f"the JWKS is not usable: {exc}")
    typer.echo(f"registered client {client_id}")
    if generated:  # shown once: only its hash is stored
        typer.echo(
            f"client secret (shown once, give it to the client's administrator): {generated}"
        )


@client_app.command("list")
def client_list(data_dir: DataDir = None) -> None:
    """List registered clients."""
    from fhirgoal.auth.clients import ClientRegistry

    async def work(db: AsyncDatabase[dict[str, Any]]) -> list[Any]:
        return await ClientRegistry(db).list()

    for client in _admin(data_dir, work):
        kind = "confidential" if client.confidential else "public"
        state = "revoked" if client.revoked else "active"
        typer.echo(f"{client.client_id}\t{kind}\t{state}\t{client.scopes}")


@client_app.command("revoke")
def client_revoke(
    client_id: Annotated[str, typer.Argument(help="The client_id.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a client: no new tokens, and its current tokens stop working."""
    from fhirgoal.auth.clients import ClientRegistry

    async def work(db: AsyncDatabase[dict[str, Any]]) -> bool:
        from fhirgoal.auth.revocation import revoke_and_audit

        found = await ClientRegistry(db).revoke(client_id)
        if found:
            await revoke_and_audit(db, "client", client_id)
        return found

    if not _admin(data_dir, work):
        _fail(f"no client {client_id}")
    typer.echo(f"revoked client {client_id}")


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Option("--username")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    practitioner: Annotated[
        str | None,
        typer.Option("--practitioner", help="A clinician's FHIR user, e.g. Practitioner/123."),
    ] = None,
    patient: Annotated[
        str | None,
        typer.Option("--patient", help="A client's own record, e.g. Patient/123 (self-report)."),
    ] = None,
    scopes: Annotated[
        str | None, typer.Option("--scopes", help="Scopes this user may grant to apps.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a login for a practitioner, or for a client on their own record (the password is
    stored as an argon2id hash)."""
    from fhirgoal.auth.users import (
        DEFAULT_PATIENT_SCOPES,
        DEFAULT_USER_SCOPES,
        UserDirectory,
        UserExists,
        patient_of,
    )

    if (practitioner is None) == (patient is None):
        _fail("give --practitioner or --patient")
    if practitioner is not None and (
        not practitioner.startswith("Practitioner/") or len(practitioner) <= len("Practitioner/")
    ):
        _fail("--practitioner must look like Practitioner/<id>")
    if patient is not None and patient_of(patient) is None:
        _fail("--patient must look like Patient/<id>")
    if len(password) < 8:
        _fail("the password must have at least 8 characters")
    fhir_user = str(practitioner or patient)
    default = DEFAULT_USER_SCOPES if practitioner else DEFAULT_PATIENT_SCOPES

    async def work(db: AsyncDatabase[dict[str, Any]]) -> None:
        await UserDirectory(db).add(username, password, fhir_user, scopes or default)

    try:
        _admin(data_dir, work)
    except UserExists:
        _fail(f"user {username} exists")
    typer.echo(f"added user {username} ({fhir_user})")


@user_app.command("list")
def user_list(data_dir: DataDir = None) -> None:
    """List practitioner logins."""
    from fhirgoal.auth.users import UserDirectory

    async def work(db: AsyncDatabase[dict[str, Any]]) -> list[Any]:
        return await UserDirectory(db).list()

    for user in _admin(data_dir, work):
        state = "revoked" if user.revoked else "active"
        typer.echo(f"{user.username}\t{user.fhir_user}\t{state}")


@user_app.command("revoke")
def user_revoke(username: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Revoke a login (it can no longer sign in)."""
    from fhirgoal.auth.users import UserDirectory

    async def work(db: AsyncDatabase[dict[str, Any]]) -> bool:
        from fhirgoal.auth.revocation import revoke_and_audit

        found = await UserDirectory(db).revoke(username)
        if found:
            await revoke_and_audit(db, "user", username)
        return found

    if not _admin(data_dir, work):
        _fail(f"no user {username}")
    typer.echo(f"revoked user {username}")


@key_app.command("rotate")
def key_rotate(data_dir: DataDir = None) -> None:
    """Start signing with a new key; the old one keeps verifying until its tokens have expired."""
    from datetime import timedelta

    from fhirgoal.auth.keys import REFRESH_SECONDS, KeyRing, encryption_key

    settings = _settings(data_dir=data_dir)
    keep = timedelta(seconds=settings.access_token_seconds + 2 * REFRESH_SECONDS + 60)
    kek = encryption_key(settings.key_encryption_key, settings.data_dir)

    async def work(db: AsyncDatabase[dict[str, Any]]) -> str:
        keys = KeyRing(db, kek, settings.signing_alg)
        await keys.seal_plaintext()
        return await keys.rotate(keep)

    typer.echo(f"signing with key {_admin(data_dir, work)}")


@app.command("launch")
def launch_command(
    patient: Annotated[str, typer.Option("--patient", help="Patient id of the launch context.")],
    encounter: Annotated[str | None, typer.Option("--encounter")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create an EHR launch context and print its `launch` value (valid for an hour)."""
    from fhirgoal.auth.state import create_launch

    async def work(db: AsyncDatabase[dict[str, Any]]) -> str:
        return await create_launch(db, patient, encounter)

    typer.echo(_admin(data_dir, work))


def _print_demo_access(settings: Settings) -> None:
    """The clinician app's way in with the demo data: a login and an EHR-launch link."""
    from urllib.parse import quote

    from fhirgoal.demo import DEMO_LAUNCH_PATIENT, DEMO_USER, demo_access

    password, launch = asyncio.run(demo_access(settings))
    base, origin = settings.public_fhir_base(), settings.public_origin()
    console.print(
        f"clinician app: {origin}/app/  (sign in as {DEMO_USER} / {password})", soft_wrap=True
    )
    console.print(
        f"EHR launch of {DEMO_LAUNCH_PATIENT} (valid for an hour): "
        f"{origin}/app/launch?iss={quote(base, safe='')}&launch={quote(launch, safe='')}",
        soft_wrap=True,  # one line, to copy
    )


def _load_demo(settings: Settings) -> None:
    from fhirgoal.demo import load_demo

    created = asyncio.run(load_demo(settings))
    console.print(
        f"demo data: {created} resources written" if created else "demo data already present"
    )


def main() -> None:  # pragma: no cover - console entry for `python -m fhirgoal.cli`
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
