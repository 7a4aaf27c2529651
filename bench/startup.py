"""Benchmark start-up (issue 13): what a server start costs with every R4 resource type served.

    python bench/startup.py [--starts 10]

Two figures, each printed as JSON:
- `build_service` on a fresh database (what every test's `fhir` fixture and every `fhirgoal serve`
  pays: indexes, the index-format check, the built-in catalogue), median and spread over
  `--starts` fresh databases of one embedded database, after one warm-up start (`first_start_s`).
- `create_app_s`: loading the conformance tables and building the search registry, once per
  process (in a fresh interpreter).
- memory: the resident set size of a fresh interpreter after `create_app` and one `build_service`
  with the conformance tables frozen as app.py freezes them (`rss_mb`), beside the interpreter's
  RSS after importing the package alone (`rss_import_mb`).

With MONGODB_URI unset it starts the embedded database in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fhirgoal.config import Settings
from fhirgoal.store.embedded import EmbeddedDatabase
from fhirgoal.store.mongo import connect


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _build(settings: Settings) -> float:
    from fhirgoal.app import build_service

    client = connect(str(settings.mongodb_uri))
    try:
        started = time.perf_counter()
        service = await build_service(settings, client)
        elapsed = time.perf_counter() - started
        await service.audit_log.stop()
        await client.drop_database(settings.db)
    finally:
        await client.close()
    return elapsed


def fresh_settings(uri: str) -> Settings:
    return Settings(mongodb_uri=uri, db=f"startup_{uuid.uuid4().hex[:12]}", auth="off")


async def time_starts(uri: str, starts: int) -> dict[str, float]:
    first = await _build(fresh_settings(uri))
    times = [await _build(fresh_settings(uri)) for _ in range(starts)]
    return {
        "first_start_s": round(first, 3),
        "build_service_median_s": round(statistics.median(times), 3),
        "build_service_min_s": round(min(times), 3),
        "build_service_max_s": round(max(times), 3),
    }


def memory_child(uri: str) -> None:
    """Run in a fresh interpreter: RSS after import, then after create_app + build_service."""
    import fhirgoal.app

    imported = rss_mb()
    settings = fresh_settings(uri)
    started = time.perf_counter()
    fhirgoal.app.create_app(settings)
    created = time.perf_counter() - started
    asyncio.run(_build(settings))
    gc.collect()
    gc.freeze()
    figures = {"rss_import_mb": imported, "rss_mb": rss_mb(), "create_app_s": created}
    print(json.dumps({name: round(value, 3) for name, value in figures.items()}))


def measure_memory(uri: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--memory-child", uri],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--memory-child", metavar="URI", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        embedded = None
        uri = os.environ.get("MONGODB_URI")
        if not uri:
            embedded = EmbeddedDatabase(Path(tmp))
            uri = embedded.start()
        try:
            figures = {**measure_memory(uri), **asyncio.run(time_starts(uri, args.starts))}
        finally:
            if embedded is not None:
                embedded.stop()
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
