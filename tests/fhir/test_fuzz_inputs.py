"""Issue 12: malformed and extreme input at every interaction finds no 5xx and no stall.

Hypothesis draws a fixed sample (derandomized, no example database) of bodies and parameters:
deep nesting, arrays of arrays, huge numbers, long strings, wrong types, empty arrays and
objects, nulls, duplicate keys, invalid UTF-8, NaN, truncation; long values, many commas, odd
modifiers and prefixes, many parameters. They go at create, update, patch, conditional
create/update/delete, search (GET and POST), history, operations and metadata, while a probe asks
for /healthz in a loop: every answer must be below 500 and the probe must answer within a second
throughout. The budget is fixed by the sample sizes below (about half a minute here).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, JSON_PATCH, observation, patient

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PROBE_LIMIT = 1.0  # seconds


def sample(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` examples of `strategy`, the same ones on every run."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def gather(value: Any) -> None:
        found.append(value)

    gather()
    return found[:count]


# ---- bodies ------------------------------------------------------------------------------------
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=20),
    st.sampled_from(["", " ", "\u0000", "\ud7ff", "2026-13-45", "a" * 5000]),
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(
    ["name", "given", "_given", "family", "identifier", "extension", "_gender", "gender",
     "birthDate", "active", "meta", "contained", "text", "id", "telecom", "valueQuantity",
     "code", "status", "subject", "component", "item", "answer", "multipleBirthInteger"]
)  # fmt: skip


def _nest(args: tuple[int, str]) -> bytes:
    depth, kind = args
    opening, closing = {"a": ("[", "]"), "o": ('{"a":', "}"), "x": ('[{"extension":', "}]")}[kind]
    inner = opening * depth + "1" + closing * depth
    return f'{{"resourceType":"Patient","extension":{inner}}}'.encode()


def _mutate(args: tuple[dict[str, Any], list[str], Any]) -> bytes:
    """A valid resource with a value placed at a path of known (or unknown) keys."""
    resource, path, value = args
    node: Any = resource
    for key in path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if isinstance(child, list) and child and isinstance(child[0], dict):
            child = child[0]
        if not isinstance(child, dict):
            child = {}
            node[key] = [child] if key in ("name", "identifier", "extension", "item") else child
        node = child
    node[path[-1]] = value
    return json.dumps(resource).encode()


_raw_bodies = st.sampled_from(
    [
        b"", b"null", b"[]", b"{}", b"[[]]", b'"Patient"', b"1e999999", b"\xff\xfe\xfd",
        b'{"resourceType":"Patient","active":true,"active":false}',
        b'{"resourceType":"Patient","x":NaN}', b'{"resourceType":"Patient","x":-Infinity}',
        b'{"resourceType":"Patient","multipleBirthInteger":1e999999}',
        b'{"resourceType":"Patient","multipleBirthInteger":' + b"9" * 5000 + b"}",
        b'{"resourceType":"Patient","name":[{"family":"\\ud800"}]}',
        b'{"resourceType":"Patient","name":[{"family":"\xc3\x28"}]}',
        b'{"resourceType":"Patient","name":[{"family":"x"}]',
        b'{"resourceType":"Patient"' + b',"a":1' * 20000 + b"}",
        b'{"resourceType":"Patient","extension":' + b"[" * 3000,
        b'{"resourceType":"Patient","text":"' + b"]" * 5000 + b'"}',
        b'{"resourceType":"Patient","name":[{"family":"\\"[[[[\\\\"}]}',
    ]
)  # fmt: skip
_bodies = st.one_of(
    _raw_bodies,
    st.tuples(st.integers(2, 3000), st.sampled_from("aox")).map(_nest),
    st.tuples(
        st.builds(lambda: patient()),
        st.lists(_keys, min_size=1, max_size=4),
        _json | st.lists(st.lists(_json, max_size=2), max_size=2),
    ).map(_mutate),
    _json.map(lambda value: json.dumps(value).encode()),
)
_patches = st.one_of(
    _bodies,
    st.lists(
        st.fixed_dictionaries(
            {
                "op": st.sampled_from(["add", "replace", "remove", "copy", "move", "test", "x"]),
                "path": st.sampled_from(["/name", "/name/-", "/name/0", "/id", "/", "", "/a/b"]),
            },
            optional={"from": st.sampled_from(["/name", "/", "/name/0/given"]), "value": _json},
        ),
        max_size=30,
    ).map(lambda ops: json.dumps(ops).encode()),
)

# ---- parameters --------------------------------------------------------------------------------
_names = st.sampled_from(
    ["name", "family", "given", "birthdate", "_id", "identifier", "value-quantity", "code",
     "date", "subject", "patient", "_lastUpdated", "general-practitioner", "_sort", "_count",
     "_include", "_revinclude", "_elements", "_summary", "_total", "_cursor", "_type",
     "_has:Observation:subject:code", "general-practitioner:Organization.name",
     "subject:Patient.name", "component-code-value-quantity", "bogus", "", "_since", "_offset"]
)  # fmt: skip
_modifiers = st.sampled_from(
    ["", ":contains", ":exact", ":missing", ":not", ":text", ":in", ":not-in", ":below",
     ":above", ":identifier", ":of-type", ":Patient", ":iterate", ":bogus", "::"]
)  # fmt: skip
_ODD_VALUES = [
    "eq2026", "ne1", "gt1e999999", "lt-0", "ge9999999999999999999999", "le", "sa2026-13", "eb",
    "ap1", "xx1", "1|http://unitsofmeasure.org|kg", "1||", "a$b", "a\\", "\\,", "true", "maybe",
    "Patient/x", "http://x/y|", "-name", "Patient:organization:Bogus", "a" * 1025, "(.*)" * 300,
    "%00", "2026-01-01T00:00:00+99:00", "0", "-1", "999999999",
]  # fmt: skip
_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(_ODD_VALUES),
    st.integers(1, 5000).map(lambda n: ",".join("1" * (n % 7 + 1) for _ in range(n))),
)
_params = st.lists(
    st.tuples(st.tuples(_names, _modifiers).map("".join), _values), min_size=1, max_size=6
) | st.integers(40, 3000).map(lambda n: [("name", f"a{i}") for i in range(n)])


async def _probe(client: httpx.AsyncClient, stop: asyncio.Event, worst: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        response = await client.get("/healthz", timeout=30)
        worst.append(time.perf_counter() - started)
        assert response.status_code == 200
        await asyncio.sleep(0.05)  # the probe's pace (a request every 50 ms), not a wait


async def test_extreme_input_at_every_interaction_gets_no_5xx_and_no_stall(
    fhir: RunningServer,
) -> None:
    client = fhir.client
    pid = (await client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()["id"]
    await client.post("/Observation", json=observation(pid), headers=FHIR_JSON)
    bodies, patches, param_sets = sample(_bodies, 120), sample(_patches, 60), sample(_params, 120)
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for body in bodies:
        requests += [
            ("POST", "/Patient", {"content": body, "headers": FHIR_JSON}),
            ("PUT", f"/Patient/{pid}", {"content": body, "headers": FHIR_JSON}),
        ]
    for i, body in enumerate(bodies[:40]):
        requests += [
            ("PUT", "/Patient?identifier=urn:x|1", {"content": body, "headers": FHIR_JSON}),
            ("POST", "/Patient", {"content": body, "headers": {**FHIR_JSON, "If-None-Exist": "identifier=a|b"}}),
            ("POST", "/$gas-tscore", {"content": body, "headers": FHIR_JSON}),
            ("POST", "/QuestionnaireResponse/$extract", {"content": body, "headers": FHIR_JSON}),
            ("POST", f"/Patient/{pid}/$progress", {"content": body, "headers": FHIR_JSON}),
            ("POST", "/Patient/_search", {"content": body, "headers": FORM}),
        ] if i % 2 == 0 else []  # fmt: skip
    requests += [
        ("PATCH", f"/Patient/{pid}", {"content": body, "headers": JSON_PATCH}) for body in patches
    ]
    for params in param_sets:
        query = urlencode(params)
        requests += [
            ("GET", f"/Patient?{query}", {}),
            ("POST", "/Observation/_search", {"content": query.encode(), "headers": FORM}),
        ]
    for params in param_sets[::5]:
        query = urlencode(params)
        requests += [
            ("GET", f"/Observation?{query}", {}),
            ("GET", f"/?{query}", {}),
            ("GET", f"/Patient/_history?{query}", {}),
            ("GET", f"/Patient/{pid}/$progress?{query}", {}),
            ("GET", f"/Patient/{pid}/$gas-tscore?{query}", {}),
            ("GET", f"/metadata?{query}", {}),
            ("DELETE", f"/Goal?{query}", {}),
            ("POST", "/Goal", {"json": patient(), "headers": {**FHIR_JSON, "If-None-Exist": query}}),
        ]  # fmt: skip

    stop, worst = asyncio.Event(), [0.0]
    failures = []
    async with httpx.AsyncClient(base_url=fhir.base[: -len("/fhir")]) as prober:
        probe = asyncio.create_task(_probe(prober, stop, worst))
        try:
            for method, url, options in requests:
                response = await client.request(method, url, **options)
                if response.status_code >= 500:
                    failures.append((method, url[:200], response.status_code, response.text[:300]))
                elif response.status_code >= 400:
                    assert response.json()["resourceType"] == "OperationOutcome", response.text
        finally:
            stop.set()
            await probe
    assert not failures, failures[:5]
    assert max(worst) < PROBE_LIMIT, f"/healthz took {max(worst):.2f} s"
    assert len(requests) > 800
