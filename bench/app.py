"""Benchmark the clinician app in a real browser (issue 14): the overview of a client with 5 GAS
goals and 100 sessions, time until its charts are drawn, and the JS+CSS it transfers.

    python bench/app.py [--sessions 100] [--loads 20]

The client's record is written as bench/clinical.py writes it (through the FHIR API, the
clinical rules running), by a server with authorization off; then the same database is served
in `smart` mode with the app, and Debian's chromium (Playwright, as tests/webapp) makes an EHR
launch: a therapist login and a launch context made in the database as `fhirgoal launch`
makes them, sign-in and consent, the overview. Each of `--loads` reloads of the overview is
timed by the page's own Performance API mark `fhirgoal-charts-ready` (static/app.js sets it
once the server-rendered SVG charts are in the document and wired), in ms since navigation
start. Transfer: the first load's JS and CSS resources (Resource Timing `encodedBodySize`: the
bytes on the wire, compressed when the server compresses). Targets: p50 under 1 s, under 300 KB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical import record, seed
from harness import database, save_results, serve, shut_down, start_server

from fhirgoal.auth.state import create_launch
from fhirgoal.auth.users import DEFAULT_USER_SCOPES, UserDirectory
from fhirgoal.store.embedded import free_port
from fhirgoal.store.mongo import connect

CHROMIUM = os.environ.get("FHIRGOAL_CHROMIUM", "/usr/bin/chromium")
THERAPIST = "Practitioner/bench-therapist"
CHARTS_READY = (
    "performance.getEntriesByName('fhirgoal-charts-ready').map(e => e.startTime)[0] ?? null"
)
ASSETS = (
    "performance.getEntriesByType('resource')"
    ".filter(e => /\\.(js|css)(\\?|$)/.test(e.name))"
    ".map(e => ({name: e.name, encoded: e.encodedBodySize, decoded: e.decodedBodySize}))"
)


async def login_and_launch(uri: str, db: str) -> tuple[str, str]:
    """A therapist login and an EHR launch context of the bench client, in the database."""
    client = connect(uri, timeout=10.0)
    try:
        database_ = client.get_database(db)
        password = secrets.token_urlsafe(12)
        await UserDirectory(database_).add("bench", password, THERAPIST, DEFAULT_USER_SCOPES)
        return password, await create_launch(database_, "bench-client", fhir_user=THERAPIST)
    finally:
        await client.close()


async def browse(origin: str, password: str, launch: str, loads: int) -> dict[str, Any]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.async_api import async_playwright

    base = f"{origin}/fhir"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        context = await browser.new_context(viewport={"width": 1100, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(60_000)
        await page.goto(f"{origin}/app/launch?iss={quote(base)}&launch={quote(launch)}")
        await page.get_by_label("User name").fill("bench")
        await page.get_by_label("Password").fill(password)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Allow").click()
        await page.wait_for_url("**/app/c/*/")
        overview = page.url
        assets = await page.evaluate(ASSETS)  # the first load: nothing cached yet
        points = await page.locator("figure.chart .pt").count()
        times = []
        for _ in range(loads):
            await page.goto(overview, wait_until="load")
            ready = await page.evaluate(CHARTS_READY)
            if ready is None:
                raise SystemExit("the overview set no fhirgoal-charts-ready mark")
            times.append(float(ready))
        await browser.close()
    return {"times_ms": times, "assets": assets, "chart_points": points}


async def bench(uri: str, sessions: int, loads: int) -> dict[str, Any]:
    db = f"bench_app_{int(time.time())}"
    plain = serve(uri, db)  # authorization off: the record is written as bench/clinical.py does
    resources = record(sessions)
    resources[0]["generalPractitioner"] = [{"reference": THERAPIST}]  # the therapist's caseload
    seeded = await seed(plain, resources)
    plain.process.terminate()
    plain.process.wait(timeout=30)
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {
        "FHIRGOAL_AUTH": "smart",
        "FHIRGOAL_BASE_URL": f"{origin}/fhir",
        "FHIRGOAL_KEY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    process = start_server(uri, port, db, env)
    try:
        password, launch = await login_and_launch(uri, db)
        seen = await browse(origin, password, launch, loads)
    finally:
        await shut_down(uri, db, process)
    times = sorted(seen["times_ms"])
    encoded = sum(a["encoded"] for a in seen["assets"])
    return {
        "sessions": sessions,
        "goals": 5,
        "seed_writes": seeded["requests"],
        "chart_points": seen["chart_points"],
        "loads": loads,
        "charts_ready_p50_ms": round(statistics.median(times), 1),
        "charts_ready_max_ms": round(times[-1], 1),
        "js_css_transferred_bytes": encoded,
        "js_css_decoded_bytes": sum(a["decoded"] for a in seen["assets"]),
        "assets": seen["assets"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--loads", type=int, default=20)
    args = parser.parse_args()
    with database() as db:
        result = asyncio.run(bench(db.uri, args.sessions, args.loads))
    print(
        f"overview of 5 goals x {result['sessions']} sessions ({result['chart_points']} chart "
        f"points): charts drawn p50 {result['charts_ready_p50_ms']} ms "
        f"(max {result['charts_ready_max_ms']} ms, {result['loads']} loads); JS+CSS transferred "
        f"{result['js_css_transferred_bytes']} bytes ({result['js_css_decoded_bytes']} decoded)"
    )
    print("targets: charts drawn p50 < 1000 ms; JS+CSS < 300 KB compressed")
    save_results("app", result)


if __name__ == "__main__":
    main()
