"""`fhirgoal` command line: serve the API, load demo data.

With no MONGODB_URI the commands start the embedded database (SecantusDB) on `--data-dir` and stop
it when they finish; a database already running on that data dir is found and reused.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from fhirgoal.app import create_app, is_loopback
from fhirgoal.config import Settings
from fhirgoal.store.embedded import EmbeddedDatabase, EmbeddedUnavailable

app = typer.Typer(
    help="fhirgoal: a FHIR R4 server for goals, GAS and session measures.", no_args_is_help=True
)
console = Console(stderr=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Where the embedded database keeps its data.")
]


def _settings(**overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)  # type: ignore[arg-type]


def _start_database(settings: Settings) -> tuple[Settings, EmbeddedDatabase | None]:
    if settings.mongodb_uri:
        return settings, None
    embedded = EmbeddedDatabase(settings.data_dir)
    try:
        uri = embedded.start()
    except EmbeddedUnavailable as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"embedded database at {uri} (data in {settings.data_dir})")
    return settings.model_copy(update={"mongodb_uri": uri}), embedded


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    data_dir: DataDir = Path("./fhirgoal-data"),
    demo: Annotated[bool, typer.Option("--demo", help="Load the demo data set first.")] = False,
) -> None:
    """Serve the FHIR API at http://HOST:PORT/fhir (with /healthz and /readyz)."""
    settings = _settings(host=host, port=port, data_dir=data_dir)
    if settings.auth == "off" and not is_loopback(host):
        console.print("[red]error:[/red] FHIRGOAL_AUTH=off is only allowed on a loopback interface")
        raise typer.Exit(2)
    if settings.auth == "off":
        console.print(
            "[yellow]warning:[/yellow] authorization is off (FHIRGOAL_AUTH=off): loopback only"
        )
    settings, embedded = _start_database(settings)
    try:
        if demo:
            _load_demo(settings)
        application = create_app(settings)
        console.print(f"FHIR base: http://{host}:{port}/fhir")
        uvicorn.run(
            application,
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    finally:
        if embedded:
            embedded.stop()


@app.command("demo")
def demo_command(data_dir: DataDir = Path("./fhirgoal-data")) -> None:
    """Load the demo data set: patients with care plans, goals and a dozen sessions of ratings."""
    settings, embedded = _start_database(_settings(data_dir=data_dir))
    try:
        _load_demo(settings)
    finally:
        if embedded:
            embedded.stop()


@app.command("reindex")
def reindex_command(
    data_dir: DataDir = Path("./fhirgoal-data"),
    resource_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only these resource types (repeatable).")
    ] = None,
) -> None:
    """Recompute the search index of every stored resource (e.g. after adding a SearchParameter)."""
    settings, embedded = _start_database(_settings(data_dir=data_dir))
    try:
        count = asyncio.run(_reindex(settings, resource_type or []))
        console.print(f"reindexed {count} resources")
    finally:
        if embedded:
            embedded.stop()


async def _reindex(settings: Settings, only: list[str]) -> int:
    from rich.progress import Progress

    from fhirgoal.app import build_service
    from fhirgoal.fhir.reindex import reindex
    from fhirgoal.store.mongo import connect

    assert settings.mongodb_uri
    client = connect(settings.mongodb_uri)
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
