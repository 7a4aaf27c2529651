"""What every `fhirgoal` command shares: its settings, its database, its console and its errors.

With no MONGODB_URI a command starts the embedded database (SecantusDB) on `--data-dir` and stops
it when it finishes; a database already running on that data dir is found and reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pymongo.asynchronous.database import AsyncDatabase
from rich.console import Console

from fhirgoal.bootstrap import embedded_database
from fhirgoal.config import Settings
from fhirgoal.logs import configure_logging
from fhirgoal.store.embedded import EmbeddedDatabase, EmbeddedUnavailable, redacted

console = Console(stderr=True)
T = TypeVar("T")

# Options default to None so that an unset option leaves the FHIRGOAL_ environment variable (or
# the Settings default) in force; `settings_from` drops the Nones.
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where the embedded database keeps its data [FHIRGOAL_DATA_DIR]."
    ),
]
# The options every connection (EHR or payer) is added with, besides its server and scopes.
KeyFile = Annotated[
    Path | None,
    typer.Option("--key-file", help="A private key (PEM, RSA or EC P-384); else one is made."),
]
KeyAlg = Annotated[str, typer.Option("--alg", help="Algorithm of a key made here: ES384 or RS384.")]
JwksOut = Annotated[
    Path | None,
    typer.Option("--jwks-out", help="Write the public JWKS here (else it is printed)."),
]


def settings_from(**overrides: object) -> Settings:
    """Every command's settings: the environment, with the options given; logging configured
    from them (FHIRGOAL_LOG_LEVEL) before the command logs anything."""
    values = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**values)  # type: ignore[arg-type]
    configure_logging(settings.log_level)
    return settings


@contextmanager
def database(
    settings: Settings, *, on_give_up: Callable[[], None] | None = None
) -> Iterator[tuple[Settings, EmbeddedDatabase | None]]:
    """`settings` with a database URI for the command (bootstrap.embedded_database: MONGODB_URI, or
    the embedded database started for it); a database that cannot start is a CLI error."""
    with ExitStack() as stack:
        try:
            opened, embedded = stack.enter_context(
                embedded_database(settings, supervise=on_give_up is not None, on_give_up=on_give_up)
            )
        except EmbeddedUnavailable as exc:
            fail(str(exc))
        if embedded is not None:
            uri = redacted(opened.mongodb_uri or "")
            console.print(f"embedded database at {uri} (data in {settings.data_dir})")
        yield opened, embedded


def admin(
    data_dir: Path | None, work: Callable[[AsyncDatabase[dict[str, Any]]], Awaitable[T]]
) -> T:
    """Run `work` against the server's database: MONGODB_URI, or the embedded one on `data_dir`
    (shared when it runs, started for the command and stopped after when it does not)."""

    async def run(settings: Settings) -> T:
        from fhirgoal.store.mongo import connect

        assert settings.mongodb_uri
        client = connect(settings.mongodb_uri, timeout=10.0)
        try:
            return await work(client.get_database(settings.db))
        finally:
            await client.close()

    with database(settings_from(data_dir=data_dir)) as (settings, _):
        return asyncio.run(run(settings))


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def check_connection_options(
    name: str, base: str, scopes: str, token_url: str | None = None
) -> None:
    """The options every connection (EHR or payer) is added with."""
    from urllib.parse import urlsplit

    for option, url in (("--base", base), ("--token-url", token_url)):
        if url is not None and (
            urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc
        ):
            fail(f"{option} must be an http(s) URL")
    if not name.replace("-", "").replace("_", "").isalnum():
        fail("--name may hold letters, digits, - and _ only")
    if not scopes.split() or not all(s.startswith("system/") for s in scopes.split()):
        fail("--scopes must be system/ scopes (SMART Backend Services)")


def connection_key(key_file: Path | None, alg: str) -> tuple[Any, str]:
    """The signing key of a new connection (EHR or payer) and its algorithm: read from a PEM
    file, or made here (exchange/backend_connections.py)."""
    from fhirgoal.exchange.backend_connections import (
        ALGORITHMS,
        BackendConnectionError,
        key_algorithm,
        key_from_pem,
        new_key,
    )

    try:
        if key_file is not None:
            try:
                key = key_from_pem(key_file.read_bytes())
            except OSError as error:
                fail(f"cannot read {key_file}: {error}")
        else:
            key = new_key(alg.upper())
    except BackendConnectionError as error:
        fail(str(error))
    key_alg = key_algorithm(key)
    if key_alg not in ALGORITHMS:
        fail(f"the key's algorithm {key_alg} is not one of {', '.join(ALGORITHMS)}")
    return key, key_alg


def hand_out_jwks(jwks: dict[str, Any], jwks_out: Path | None) -> None:
    """A connection's public key set, for the other server's administrator: written to
    `jwks_out`, or printed."""
    import json

    text = json.dumps(jwks, indent=2)
    if jwks_out is not None:
        jwks_out.write_text(text + "\n")
        console.print(f"public JWKS written to {jwks_out}")
    else:
        typer.echo(text)
