"""`fhirgoal mapping test|apply|list`: run a mapping folder's example pairs, or one resource through it.

The mappings are data (fhirgoal/exchange/mapping.py says how they are written); these commands are
how their authors check them: `test DIR` runs every example pair of the folder and prints pass or
fail per pair with the first difference (exit 1 on any failure, 2 when the folder cannot be
loaded), `apply DIR --direction inbound|outbound FILE` prints what one resource becomes (exit 1 on
a MappingError, naming the rule and the element). DIR is a folder, or the name of a shipped
mapping (`us-core`, `pco`, `example-ehr`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fhirgoal.config import BUILTIN_MAPPINGS_DIR
from fhirgoal.core import jsonio
from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.mapping import (
    DIRECTIONS,
    Direction,
    Mapping,
    MappingError,
    resolve_directory,
)
from fhirgoal.exchange.mapping_examples import run_examples

mapping_app = typer.Typer(
    help="Mappings to and from EHR dialects (mappings/): test and apply them.",
    no_args_is_help=True,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

MappingDir = Annotated[
    str, typer.Argument(help="A mapping folder, or a shipped mapping's name (us-core, pco, ...).")
]


def _load(directory: str) -> Mapping:
    try:
        return Mapping.load(resolve_directory(directory))
    except MappingError as exc:
        err.print(f"[red]cannot load the mapping[/red]: {escape(str(exc))}")
        raise typer.Exit(2) from None


@mapping_app.command("test")
def mapping_test(directory: MappingDir) -> None:
    """Run the folder's example pairs (examples/inbound, examples/outbound); exit 1 on a failure."""
    mapping = _load(directory)
    try:
        results = run_examples(mapping)
    except MappingError as exc:
        err.print(f"[red]bad example[/red]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    if not results:
        err.print(f"[red]no example pairs in {mapping.directory}/examples[/red]")
        raise typer.Exit(1)
    failed = 0
    for result in results:
        if result.passed:
            out.print(f"[green]pass[/green] {escape(result.example.name)}")
        else:
            failed += 1
            out.print(
                f"[red]FAIL[/red] {escape(result.example.name)}: {escape(result.difference or '')}"
            )
    out.print(f"{mapping.name}: {len(results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


@mapping_app.command("apply")
def mapping_apply(
    directory: MappingDir,
    file: Annotated[Path, typer.Argument(help="A JSON file holding one FHIR resource.")],
    direction: Annotated[
        str, typer.Option("--direction", "-d", help="inbound (EHR -> fhirgoal) or outbound.")
    ],
) -> None:
    """Print, as a JSON array, the resources FILE's resource becomes in DIRECTION."""
    if direction not in DIRECTIONS:
        err.print("[red]--direction must be inbound or outbound[/red]")
        raise typer.Exit(2)
    mapping = _load(directory)
    try:
        resource = jsonio.loads(file.read_bytes())
    except (OSError, FhirError) as exc:
        err.print(f"[red]cannot read {escape(str(file))}[/red]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    chosen: Direction = "inbound" if direction == "inbound" else "outbound"
    try:
        produced = mapping.apply(chosen, resource)
    except MappingError as exc:
        err.print(
            f"[red]mapping error[/red] in rule {escape(exc.rule)} at {escape(exc.element)}: "
            f"{escape(exc.message)}"
        )
        raise typer.Exit(1) from None
    print(jsonio.dumps_indented(produced))


@mapping_app.command("list")
def mapping_list() -> None:
    """The mappings shipped with fhirgoal."""
    for folder in sorted(p for p in BUILTIN_MAPPINGS_DIR.iterdir() if p.is_dir()):
        mapping = Mapping.load(folder)
        out.print(f"{mapping.name}\t{len(mapping.rules)} rules\t{mapping.title}")
