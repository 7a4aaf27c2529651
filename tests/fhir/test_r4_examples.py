"""Every example of the R4 specification that is valid R4 is accepted and comes back unchanged.

The examples are the npm package hl7.fhir.r4.examples 4.0.1 (tests/fhir/r4_examples.py fetches
and verifies it): ~5,300 resources of every type, Bundles included, from Patient-example to the
specification's own StructureDefinitions, ValueSets and SearchParameters. Each is written as sent
(its own bytes): PUT at its own id (https://hl7.org/fhir/R4/http.html#upsert), or POST when it
has none. Then the version that write made is read back (vread, so that no other example's write
of the same id can interfere) and must equal what was sent apart from `meta.versionId` and
`meta.lastUpdated` (and the id the server assigned to a POST), numbers compared as their JSON
text: storage is lossless.

Types without a RESTful endpoint in R4 (Parameters, OperationOutcome) must be refused at their
type's URL and are checked inside a `collection` Bundle instead, where R4 carries them.

r4_examples_expected.json lists the examples the server refuses, each with the reason: the ones
that are not valid R4 (the specification's examples break a few of its own rules) and the few it
refuses by design. The test fails when a listed one is accepted (the list is stale) and when an
unlisted one is refused or changes on the way.

One server (`fhirgoal serve`, its own process, so that it has a core of its own while this process
compares) and one database for all of them; a few connections in parallel. Resources refer to
each other across examples, but nothing here depends on the order they are loaded in: the server
does not require a reference's target to exist (https://hl7.org/fhir/R4/references.html), and
each check reads the very version its own write made.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from fhirgoal.config import Settings
from fhirgoal.store.embedded import free_port
from fhirgoal.store.mongo import connect
from tests.fhir.r4_examples import raw_examples
from tests.serve_process import ServeProcess

EXPECTED = Path(__file__).with_name("r4_examples_refused.json")
WIRE_ONLY = {"Parameters", "OperationOutcome"}  # resource-types.json "other"
CONNECTIONS = 4
FHIR_JSON = "application/fhir+json"
# The server's own body limit (Settings.max_body_bytes, 4 MiB by default): a few of the
# specification's Bundles (all its ValueSets in one, ...) are larger.
BODY_LIMIT = Settings().max_body_bytes


def exact(text: bytes | str) -> Any:
    """JSON with every number kept as its text, so that 1.0 and 1.00 differ."""
    return json.loads(text, parse_float=lambda s: ("number", s), parse_int=lambda s: ("number", s))


def comparable(resource: dict[str, Any], keep_id: bool = True) -> dict[str, Any]:
    """A resource without what the server sets: meta.versionId, meta.lastUpdated (and the id of
    a resource it named)."""
    out = dict(resource)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items()}
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        out["meta"] = meta
    if not keep_id:
        out.pop("id", None)
    return out


def first_difference(sent: Any, got: Any, path: str = "") -> str | None:
    if type(sent) is not type(got):
        return f"{path or '(root)'}: sent {json.dumps(sent)[:80]}, got {json.dumps(got)[:80]}"
    if isinstance(sent, dict):
        for key in sorted(set(sent) | set(got)):
            if key not in got:
                return f"{path}.{key}: missing"
            if key not in sent:
                return f"{path}.{key}: added"
            found = first_difference(sent[key], got[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(sent, list):
        if len(sent) != len(got):
            return f"{path}: {len(sent)} items sent, {len(got)} returned"
        for i, (a, b) in enumerate(zip(sent, got, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if sent == got else f"{path}: sent {sent!r}, got {got!r}"


def refusal(response: httpx.Response) -> str:
    """Why the server refused a write: its status and the first issue's diagnostics."""
    try:
        issues = response.json().get("issue", [])
    except ValueError:
        issues = []
    first = issues[0] if issues else {}
    where = first.get("expression", [""])[0] if first.get("expression") else ""
    return f"HTTP {response.status_code}: {first.get('diagnostics', response.text[:200])} {where}"


async def write_and_read_back(
    client: httpx.AsyncClient, rt: str, rid: str | None, body: bytes
) -> str | None:
    """None when the resource is accepted and comes back unchanged, else what went wrong."""
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if rid is not None:
        response = await client.put(f"/{rt}/{rid}", content=body, headers=headers)
    else:
        response = await client.post(f"/{rt}", content=body, headers=headers)
    if response.status_code not in (200, 201):
        return refusal(response)
    location = response.headers.get("content-location") or response.headers["location"]
    stored = await client.get(location, headers={"Accept": FHIR_JSON})
    if stored.status_code != 200:
        return f"read back: HTTP {stored.status_code}"
    keep_id = rid is not None
    return first_difference(
        comparable(exact(body), keep_id), comparable(exact(stored.content), keep_id)
    )


async def check_wire_only(client: httpx.AsyncClient, name: str, body: bytes) -> str | None:
    """A Parameters or OperationOutcome: no endpoint of its own (404), and carried unchanged in
    a collection Bundle."""
    resource = json.loads(body)
    endpoint = await client.post(
        f"/{resource['resourceType']}", content=body, headers={"Content-Type": FHIR_JSON}
    )
    if endpoint.status_code != 404:
        return f"its type's endpoint answered {endpoint.status_code}, not 404"
    rid = f"wire-{uuid.uuid4().hex[:16]}"
    bundle = (
        f'{{"resourceType":"Bundle","id":"{rid}","type":"collection",'
        f'"entry":[{{"fullUrl":"urn:uuid:{uuid.uuid4()}","resource":'.encode()
        + body
        + b"}]}"
    )
    return await write_and_read_back(client, "Bundle", rid, bundle)


async def check_all(client: httpx.AsyncClient, examples: dict[str, bytes]) -> dict[str, str]:
    """What went wrong with each example that did not round-trip, by file name."""
    # Examples that share a type and id (the specification's ImplementationGuide is there twice)
    # are written one after the other by one worker; the others in any order.
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, body in examples.items():
        resource = json.loads(body)
        groups[(resource["resourceType"], resource.get("id") or name)].append(name)
    queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
    # Biggest first, so that the long ones do not end the run alone.
    for key, names in sorted(groups.items(), key=lambda g: -max(len(examples[n]) for n in g[1])):
        queue.put_nowait((key[0], names))
    problems: dict[str, str] = {}

    async def worker() -> None:
        while not queue.empty():
            rt, names = queue.get_nowait()
            for name in names:
                body = examples[name]
                if len(body) > BODY_LIMIT:
                    problem: str | None = f"HTTP 413: larger than the body limit ({len(body)})"
                elif rt in WIRE_ONLY:
                    problem = await check_wire_only(client, name, body)
                else:
                    problem = await write_and_read_back(
                        client, rt, json.loads(body).get("id"), body
                    )
                if problem:
                    problems[name] = problem

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return problems


@contextmanager
def examples_server(mongo_uri: str, data_dir: Path) -> Iterator[str]:
    """`fhirgoal serve` with the default limits (the `fhir` fixture lowers the body limit) on a
    fresh database of the session's database server (dropped afterwards); its FHIR base URL."""
    db = f"test_{uuid.uuid4().hex[:12]}"
    env = {"MONGODB_URI": mongo_uri, "FHIRGOAL_DB": db, "FHIRGOAL_AUTH": "off"}
    server = ServeProcess(data_dir, free_port(), env=env).start()
    try:
        yield server.base
    finally:
        server.stop()
        asyncio.run(_drop(mongo_uri, db))


async def _drop(mongo_uri: str, db: str) -> None:
    mongo = connect(mongo_uri)
    await mongo.drop_database(db)
    await mongo.close()


async def check_against(base: str, examples: dict[str, bytes]) -> dict[str, str]:
    limits = httpx.Limits(max_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        return await check_all(client, examples)


def test_every_valid_r4_example_is_accepted_and_round_trips(mongo_uri: str, tmp_path: Path) -> None:
    examples = raw_examples()  # raises, naming the cause, when the package cannot be had
    refused: dict[str, dict[str, Any]] = json.loads(EXPECTED.read_text(encoding="utf-8"))
    refused.pop("_comment", None)
    assert len(examples) > 5000
    assert [name for name in refused if name not in examples] == [], "stale entries"
    started = time.monotonic()
    with examples_server(mongo_uri, tmp_path) as base:
        problems = asyncio.run(check_against(base, examples))
    print(f"{len(examples)} examples in {time.monotonic() - started:.0f} s")
    unexpected = sorted(
        f"{name}: {why}"
        for name, why in problems.items()
        if name not in refused or not why.startswith(f"HTTP {refused[name]['status']}:")
    )
    now_accepted = sorted(name for name in refused if name not in problems)
    assert not unexpected, "refused or changed, and not listed:\n" + "\n".join(unexpected)
    assert not now_accepted, "listed as refused, but accepted now:\n" + "\n".join(now_accepted)
