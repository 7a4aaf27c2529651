"""`fhirgoal ehr add|list|remove|subscribe` and `fhirgoal sync status|run|retry|unmatched`
(issue 15).

An EHR connection (exchange/connections.py) is what fhirgoal needs to be a SMART Backend Services
client of an EHR (https://hl7.org/fhir/smart-app-launch/backend-services.html): its FHIR base,
the client id the EHR registered fhirgoal under, a signing key (created here unless one is given)
and the `system/` scopes; `ehr add` writes the public JWKS for the EHR's administrator to register.
`sync run` does one pass of both directions and exits; `fhirgoal serve` syncs continuously.
`sync retry` puts dead deliveries back (exchange/delivery.py parks at once what retrying cannot
fix, e.g. a mapping that cannot express a resource: after the fix, they go again).
`ehr subscribe` (or `ehr add --subscribe`) has the EHR notify fhirgoal of changes
(exchange/ehr_subscribe.py makes the EHR's Subscriptions, exchange/ehr_push.py hears them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
from fhirgoal.config import BUILTIN_MAPPINGS_DIR, Settings
from fhirgoal.exchange.connections import (
    DEFAULT_SCOPES,
    DEFAULT_SEND,
    PULL_TYPES,
    SUBSCRIPTION_SCOPE,
    ConnectionStore,
    EhrConnection,
    EhrConnectionError,
    check_bulk_export,
    check_choices,
)
from fhirgoal.exchange.dialect import DialectError, load_dialect
from fhirgoal.exchange.mapping import resolve_directory

T = TypeVar("T")
ehr_app = typer.Typer(help="EHR connections (SMART Backend Services).", no_args_is_help=True)
sync_app = typer.Typer(help="Sync with the connected EHRs.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ehr_app, name="ehr")
    app.add_typer(sync_app, name="sync")


def _split(value: str | None, default: tuple[str, ...]) -> list[str]:
    if value is None:
        return list(default)
    return [part for part in value.replace(",", " ").split() if part]


# ---- ehr ---------------------------------------------------------------------------------------
@ehr_app.command("add")
def ehr_add(
    name: Annotated[str, typer.Option("--name", help="The connection's name.")],
    base: Annotated[str, typer.Option("--base", help="The EHR's FHIR base URL.")],
    client_id: Annotated[
        str, typer.Option("--client-id", help="The client id the EHR registered fhirgoal under.")
    ],
    key_file: KeyFile = None,
    alg: KeyAlg = "ES384",
    jwks_out: JwksOut = None,
    scopes: Annotated[
        str, typer.Option("--scopes", help="The system/ scopes to ask for, space-separated.")
    ] = DEFAULT_SCOPES,
    mapping: Annotated[
        str | None,
        typer.Option(
            "--mapping",
            help="The EHR's dialect: a mapping folder, or a built-in mapping's name "
            "(`fhirgoal mapping list`).",
        ),
    ] = None,
    send: Annotated[
        str | None,
        typer.Option("--send", help=f"Kinds sent to the EHR [{','.join(DEFAULT_SEND)}]."),
    ] = None,
    pull: Annotated[
        str | None,
        typer.Option("--pull", help=f"Types pulled from the EHR [{','.join(PULL_TYPES)}]."),
    ] = None,
    patient_system: Annotated[
        str | None,
        typer.Option("--patient-system", help="Match patients by this identifier system only."),
    ] = None,
    bulk: Annotated[
        str | None,
        typer.Option(
            "--bulk",
            help='Pull many patients at once with the EHR\'s Bulk $export: "patient" '
            '(Patient/$export narrowed to the followed patients) or "Group/<id>".',
        ),
    ] = None,
    subscribe: Annotated[
        bool,
        typer.Option(
            "--subscribe",
            help="Have the EHR notify fhirgoal of changes (a Subscription there, made by "
            f"`sync run` or `serve`; adds {SUBSCRIPTION_SCOPE} to the scopes).",
        ),
    ] = False,
    user_tokens: Annotated[
        bool,
        typer.Option(
            "--user-tokens/--no-user-tokens",
            help="FHIRGOAL_AUTH=external: send what a clinician's request causes with their own "
            "token when the EHR accepts it (its aud names --base), so the EHR attributes it "
            "to them; else, and for derived writes, the backend token.",
        ),
    ] = True,
    user_token_issuer: Annotated[
        str | None,
        typer.Option(
            "--user-token-issuer",
            help="The EHR takes this issuer's user tokens whatever their aud (use theirs "
            "when the token's iss is this).",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Add an EHR connection and hand out its public key set (JWKS)."""
    check_connection_options(name, base, scopes)
    send_kinds, pull_types = _split(send, DEFAULT_SEND), _split(pull, PULL_TYPES)
    try:
        check_choices(send_kinds, pull_types)
        check_bulk_export(bulk)
    except EhrConnectionError as error:
        fail(str(error))
    key, key_alg = connection_key(key_file, alg)
    mapping_dir = None
    if mapping is not None:
        folder = resolve_directory(mapping)
        if not folder.is_dir():
            fail(f"--mapping {mapping} is neither a folder nor a built-in mapping")
        # A built-in mapping is kept by name, so that an upgraded fhirgoal uses its own copy.
        mapping_dir = mapping if folder.parent == BUILTIN_MAPPINGS_DIR else str(folder.resolve())
        try:
            load_dialect(mapping_dir)
        except DialectError as error:
            fail(str(error))
    settings = settings_from(data_dir=data_dir)
    if subscribe:
        scopes = with_subscription_scope(scopes)
    connection = EhrConnection(
        name=name,
        base=base.rstrip("/"),
        client_id=client_id,
        scopes=" ".join(scopes.split()),
        alg=key_alg,
        public_jwk={},
        send=tuple(send_kinds),
        pull=tuple(pull_types),
        mapping=mapping_dir,
        patient_system=patient_system,
        bulk_export=bulk,
        subscribe=subscribe,
        user_tokens=user_tokens,
        user_token_issuer=user_token_issuer,
    )

    async def work(db: AsyncDatabase[dict[str, Any]]) -> dict[str, Any]:
        from fhirgoal.auth.keys import encryption_key

        store = ConnectionStore(db)
        await store.add(
            connection, key, encryption_key(settings.key_encryption_key, settings.data_dir)
        )
        added = await store.get(name)
        assert added is not None
        return added.public_jwks()

    try:
        jwks = admin(data_dir, work)
    except EhrConnectionError as error:
        fail(str(error))
    hand_out_jwks(jwks, jwks_out)
    console.print(
        f"added EHR connection {name}: register client {client_id} at the EHR with this JWKS "
        f"(private_key_jwt, {key_alg}) and the scopes: {connection.scopes}"
    )


def _user_tokens_policy(connection: EhrConnection) -> str:
    if not connection.user_tokens:
        return "off"
    if connection.user_token_issuer:
        return f"when aud names the EHR or iss is {connection.user_token_issuer}"
    return "when aud names the EHR"


@ehr_app.command("list")
def ehr_list(data_dir: DataDir = None) -> None:
    """List the EHR connections (never their private keys)."""

    async def work(db: AsyncDatabase[dict[str, Any]]) -> list[EhrConnection]:
        return await ConnectionStore(db).list()

    for c in admin(data_dir, work):
        typer.echo(
            f"{c.name}\t{c.base}\tclient {c.client_id}\t{c.alg} key {c.public_jwk.get('kid')}\t"
            f"send {','.join(c.send)}\tpull {','.join(c.pull)}\t"
            f"{'subscribes' if c.subscribe else 'pulls only'}\t"
            f"mapping {c.mapping or '(none: fhirgoal FHIR)'}\tscopes {c.scopes}\t"
            f"bulk {c.bulk_export or 'off'}\t"
            f"user tokens {_user_tokens_policy(c)}"
        )


@ehr_app.command("remove")
def ehr_remove(
    name: Annotated[str, typer.Argument(help="The connection's name.")], data_dir: DataDir = None
) -> None:
    """Remove a connection: its undelivered items are dropped, its links forgotten."""
    from fhirgoal.exchange.ehr_push_store import PushStore
    from fhirgoal.exchange.links import LinkStore
    from fhirgoal.store.outbox import OutboxStore

    async def work(db: AsyncDatabase[dict[str, Any]]) -> int | None:
        if not await ConnectionStore(db).remove(name):
            return None
        await LinkStore(db).forget(name)
        await PushStore(db).forget(name)
        return await OutboxStore(db).void_for(
            f"EhrConnection/{name}", "the EHR connection was removed"
        )

    dropped = admin(data_dir, work)
    if dropped is None:
        fail(f"no EHR connection {name}")
    typer.echo(f"removed EHR connection {name} ({dropped} undelivered item(s) dropped)")


def with_subscription_scope(scopes: str) -> str:
    """`scopes` with the one a subscribing connection needs at the EHR."""
    parts = scopes.split()
    if not any(s.startswith(("system/Subscription.", "system/*.")) for s in parts):
        parts.append(SUBSCRIPTION_SCOPE)
    return " ".join(parts)


@ehr_app.command("subscribe")
def ehr_subscribe(
    name: Annotated[str, typer.Argument(help="The connection's name.")],
    off: Annotated[
        bool, typer.Option("--off", help="Stop: delete the Subscriptions at the EHR.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Have the EHR notify fhirgoal of changes: Subscriptions there for the topics that cover
    what the connection pulls, filtered to the followed patients (or, with --off, none)."""
    from fhirgoal.exchange.ehr_push_store import PushStore
    from fhirgoal.exchange.ehr_subscribe import SubscribeError, Subscriber, notify_url

    async def work(sync: Any) -> list[str]:
        connection = sync.get(name)
        if connection is None:
            fail(f"no EHR connection {name}")
        scopes = connection.scopes if off else with_subscription_scope(connection.scopes)
        await sync.store.set_subscribe(name, not off, scopes)
        await sync.refresh()
        connection = sync.get(name)
        subscriber = Subscriber(sync, PushStore(sync.service.database))
        if off:
            gone = await subscriber.unsubscribe(connection)
            return [f"{name}: deleted at the EHR: {', '.join(gone) or 'nothing'}; pulls only"]
        report = await subscriber.ensure(connection)
        lines = [f"{name}: {action}" for action in report.actions]
        lines.append(
            f"{name}: notifications to {notify_url(sync, connection)}; "
            f"{report.followed} patient(s) followed ({report.linked} linked now)"
        )
        for rt, topic in sorted(report.covered.items()):
            lines.append(f"{name}: {rt} pushed by topic {topic}")
        if report.uncovered:
            lines.append(
                f"{name}: no topic of the EHR covers {', '.join(report.uncovered)}: "
                "pulled only (FHIRGOAL_SYNC_PULL_SECONDS, `fhirgoal sync run`)"
            )
        if not report.followed:
            lines.append(f"{name}: no patient is followed yet: subscribed once one is")
        if report.fresh_patients:
            lines.append(f"{name}: newly followed patients: `fhirgoal sync run --ehr {name}`")
        lines.append(f"{name}: the EHR must grant client {connection.client_id}: {scopes}")
        return lines

    with database(settings_from(data_dir=data_dir)) as (settings, _):
        try:
            lines = asyncio.run(_with_sync(settings, work))
        except SubscribeError as error:
            fail(f"{name}: {error}")
    for line in lines:
        console.print(line, soft_wrap=True)


STATUS_UNMATCHED_SHOWN = 5  # records waiting for a human listed by `sync status`
STATUS_DEAD_SHOWN = 5  # dead items listed by `sync status`, the latest first


# ---- sync --------------------------------------------------------------------------------------
async def _with_sync(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(sync)` with the service built as a server builds it (EHR sync installed)."""
    from fhirgoal.bootstrap import build_service
    from fhirgoal.exchange.ehr_install import sync_of
    from fhirgoal.store.mongo import connect

    assert settings.mongodb_uri
    client = connect(settings.mongodb_uri, timeout=10.0)
    try:
        service = await build_service(settings, client)
        sync = sync_of(service)
        try:
            return await work(sync)
        finally:
            await sync.close()
    finally:
        await client.close()


@sync_app.command("status")
def sync_status(data_dir: DataDir = None) -> None:
    """Per connection: items pending, delivered, failing and dead, the last error, links,
    conflicts, records waiting for a human (the first few with their reasons), and the last
    pull."""
    from rich.table import Table

    from fhirgoal.exchange.ehr_push_store import PushStore

    async def work(sync: Any) -> list[dict[str, Any]]:
        rows = []
        push = PushStore(sync.service.database)
        for connection in sync.connections:
            report = await sync.service.outbox.store.destination_report(connection.dest)
            pull = await sync.store.pull_report(connection.name)
            pushed = await push.state(connection.name) if connection.subscribe else None
            rows.append(
                {
                    "name": connection.name,
                    **report,
                    "dead_items": await sync.service.outbox.store.dead_items(
                        connection.dest, STATUS_DEAD_SHOWN
                    ),
                    "links": await sync.links.counts(connection.name),
                    "conflicts": await sync.links.conflicts(connection.name),
                    "unmatched": await sync.links.held(connection.name),
                    "pull": pull,
                    "push": pushed,
                    "as_user": await sync.store.user_delivery_report(connection.name),
                }
            )
        return rows

    with database(settings_from(data_dir=data_dir)) as (settings, _):
        rows = asyncio.run(_with_sync(settings, work))
    table = Table(
        "connection", "pending", "delivered", "as users", "failing", "dead", "linked", "conflicts",
        "unmatched",
    )  # fmt: skip
    for row in rows:
        linked = ", ".join(f"{n} {t}" for t, n in sorted(row["links"].items())) or "0"
        table.add_row(
            row["name"],
            str(row["pending"] + row["delivering"]),
            str(row["delivered"]),
            str(row["as_user"]["sent"]),
            str(row["failing"]),
            str(row["dead"]),
            linked,
            str(row["conflicts"]),
            str(len(row["unmatched"])),
        )
    console.print(table)
    for row in rows:
        last = row["last_error"]
        if last:
            console.print(
                f"{row['name']}: last error ({last['ref']}/_history/{last['vid']}): {last['error']}",
                soft_wrap=True,
            )
        for dead in row["dead_items"]:
            console.print(
                f"{row['name']}: dead ({dead.get('attempts', 0)} attempt(s)): {dead['_id']}: "
                f"{dead.get('error', '')}",
                soft_wrap=True,
            )
        if row["dead"] > len(row["dead_items"]):
            console.print(f"{row['name']}: ... {row['dead']} dead in all")
        if row["dead"]:
            console.print(
                f"{row['name']}: once the cause is fixed: fhirgoal sync retry --ehr {row['name']} "
                "--all-dead (or --item KEY)"
            )
        for held in row["unmatched"][:STATUS_UNMATCHED_SHOWN]:
            console.print(
                f"{row['name']}: waits for a human: {held['record']} ({held['kind']}): "
                f"{held['reason']}",
                soft_wrap=True,
            )
        if len(row["unmatched"]) > STATUS_UNMATCHED_SHOWN:
            console.print(
                f"{row['name']}: ... all of them: fhirgoal sync unmatched --ehr {row['name']}"
            )
        fell_back = row["as_user"]["fell_back"]
        if fell_back:
            console.print(
                f"{row['name']}: {fell_back} delivery(s) went with the backend token instead of "
                "the user's (expired before delivery, or refused by the EHR: see their AuditEvents)"
            )
        pull = row["pull"]
        if pull.get("last_pull"):
            outcome = f"failed: {pull['pull_error']}" if pull.get("pull_error") else "ok"
            console.print(
                f"{row['name']}: last pull {pull['last_pull']:%Y-%m-%d %H:%M:%S} UTC {outcome}"
            )
        pushed = row["push"]
        if pushed is not None:
            subs = ", ".join(
                f"Subscription/{s.id} ({', '.join(s.types)})" for s in pushed.subscriptions
            )
            due = " (a pull is due: notifications were lost)" if pushed.pull_due else ""
            console.print(
                f"{row['name']}: pushed by the EHR through {subs or 'no Subscription yet'}{due}",
                soft_wrap=True,
            )
    if not rows:
        console.print("no EHR connections (fhirgoal ehr add)")


@sync_app.command("run")
def sync_run(
    ehr: Annotated[str | None, typer.Option("--ehr", help="Only this connection.")] = None,
    data_dir: DataDir = None,
) -> None:
    """One full pass: pull from each EHR (with progress), deliver what is due, exit."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from fhirgoal.exchange.delivery import DeliveryWorker
    from fhirgoal.exchange.ehr_inbound import Puller
    from fhirgoal.fhir.instants import now

    class Bars:
        def __init__(self, progress: Progress) -> None:
            self.progress = progress
            self.task = progress.add_task("pull", total=None)

        def stage(self, description: str, total: int | None) -> None:
            self.progress.update(self.task, description=description, total=total, completed=0)

        def advance(self, count: int) -> None:
            self.progress.advance(self.task, count)

    async def work(sync: Any) -> list[str]:
        connections = sync.connections
        if ehr is not None:
            connections = [c for c in connections if c.name == ehr]
            if not connections:
                fail(f"no EHR connection {ehr}")
        from fhirgoal.exchange.ehr_push_store import PushStore
        from fhirgoal.exchange.ehr_subscribe import Subscriber

        lines = []
        puller = Puller(sync)
        push = PushStore(sync.service.database)
        for connection in connections:
            started = now()
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                console=console, transient=True,
            ) as progress:  # fmt: skip
                try:
                    report = await puller.pull(connection, Bars(progress))
                except Exception as error:  # reported, and the other connections still run
                    lines.append(f"{connection.name}: pull failed: {error}")
                    continue
            await push.pulled(connection.name, started)  # what notifications asked for
            lines.append(
                f"{connection.name}: pulled {report.fetched} resource(s): {report.written} "
                f"written, {report.unchanged} unchanged, {report.held} held for a human, "
                f"{report.conflicts} conflict(s); {report.deleted} deleted as in the EHR, "
                f"{report.kept} deleted there but kept (Flag); {report.linked} patient(s) linked, "
                f"{report.moved} moved to the EHR record that replaced theirs"
            )
            lines += [f"{connection.name}: {error}" for error in report.errors]
            if connection.subscribe:
                try:
                    made = await Subscriber(sync, push).ensure(connection)
                except Exception as error:  # reported, and the rest of the pass still runs
                    lines.append(f"{connection.name}: subscriptions not made: {error}")
                else:
                    lines += [f"{connection.name}: {action}" for action in made.actions]
        worker = DeliveryWorker(sync.service.outbox, sync.settings)
        try:
            for connection in connections:
                attempts = await worker.run_once(connection.dest)
                lines.append(f"{connection.name}: {attempts} delivery attempt(s)")
        finally:
            await worker.stop()
        return lines

    with database(settings_from(data_dir=data_dir)) as (settings, _):
        lines = asyncio.run(_with_sync(settings, work))
    for line in lines:
        console.print(line, soft_wrap=True)


@sync_app.command("unmatched")
def sync_unmatched(
    ehr: Annotated[str | None, typer.Option("--ehr", help="Only this connection.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Records the sync could not place, each with the reason (for a human)."""
    from fhirgoal.exchange.links import LinkStore

    async def work(db: AsyncDatabase[dict[str, Any]]) -> list[dict[str, Any]]:
        return await LinkStore(db).held(ehr)

    rows = admin(data_dir, work)
    for row in rows:
        typer.echo(f"{row['conn']}\t{row['kind']}\t{row['record']}\t{row['reason']}")
    if not rows:
        console.print("nothing waits for a human")


@sync_app.command("retry")
def sync_retry(
    ehr: Annotated[str | None, typer.Option("--ehr", help="Only this connection.")] = None,
    item: Annotated[
        str | None, typer.Option("--item", help="The dead item's key (fhirgoal sync status).")
    ] = None,
    all_dead: Annotated[
        bool, typer.Option("--all-dead", help="Every dead item (of --ehr, when given).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Put dead deliveries back: due now, their dead-letter horizon counted from now."""
    from fhirgoal.store.outbox import OutboxStore

    if (item is None) == (not all_dead):
        fail("say which: --item KEY or --all-dead")
    if item is not None and not item.startswith("EhrConnection/"):
        fail(f"{item} is not the key of an EHR sync item (fhirgoal sync status lists them)")

    async def work(db: AsyncDatabase[dict[str, Any]]) -> int | None:
        dest = None
        if ehr is not None:
            connection = await ConnectionStore(db).get(ehr)
            if connection is None:
                return None
            dest = connection.dest
        elif item is None:
            # every connection's dead items, not a Subscription's
            names = [c.dest for c in await ConnectionStore(db).list()]
            return sum([await OutboxStore(db).revive(dest) for dest in names])
        return await OutboxStore(db).revive(dest, item)

    revived = admin(data_dir, work)
    if revived is None:
        fail(f"no EHR connection {ehr}")
    if item is not None and not revived:
        fail(f"no dead item {item}" + (f" of EHR connection {ehr}" if ehr else ""))
    typer.echo(f"{revived} dead item(s) put back; the next delivery pass takes them")
