"""Browser tests of the clinician app (fhirgoal/webapp) in a real headless Chromium.

Playwright for Python drives Debian's `chromium` (executable_path; no browser is ever
downloaded: PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD). Playwright rather than Selenium because its
asyncio API runs in the test's own event loop, beside the uvicorn server the test started (a
blocking driver would stall that server), and because it waits for navigations and elements by
itself instead of sleeping.

axe-core (https://github.com/dequelabs/axe-core) checks accessibility: its single `axe.min.js`
is fetched from the npm registry with `npm pack` once per machine (a test-time download, never at
the app's run time) into ~/.cache/fhirgoal, or taken from FHIRGOAL_AXE_JS.

The servers are the real app in `smart` mode (tests/auth/conftest.py run_smart) with the demo
data written through the FHIR service, and a practitioner login for the demo therapist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fhirgoal.demo import write_demo
from tests.auth.conftest import SmartServer, run_smart

CHROMIUM = os.environ.get("FHIRGOAL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
AXE_VERSION = "4.10.3"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CLINICIAN, PASSWORD = "morgan", "demo-pass-1234"


def _axe_path() -> Path:
    given = os.environ.get("FHIRGOAL_AXE_JS")
    if given:
        return Path(given)
    cache = Path.home() / ".cache" / "fhirgoal" / f"axe-core-{AXE_VERSION}" / "axe.min.js"
    if cache.exists():
        return cache
    if shutil.which("npm") is None:
        pytest.fail("npm is needed once to fetch axe-core (or set FHIRGOAL_AXE_JS)")
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            ["npm", "pack", f"axe-core@{AXE_VERSION}", "--silent"],
            cwd=work, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        with tarfile.open(Path(work) / f"axe-core-{AXE_VERSION}.tgz") as archive:
            member = archive.extractfile("package/axe.min.js")
            assert member is not None
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(member.read())
    return cache


@pytest.fixture(scope="session")
def axe_source() -> str:
    return _axe_path().read_text()


def _require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (see .ci/run)")


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Any]:
    _require_chromium()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(chromium: Any) -> AsyncIterator[Any]:
    context = await chromium.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(20_000)
    yield page
    await context.close()


async def with_demo(server: SmartServer) -> SmartServer:
    """The demo data set, and the demo therapist's login."""
    await write_demo(server.service)
    await server.app.state.smart.users.add(
        CLINICIAN,
        PASSWORD,
        "Practitioner/demo-therapist",
        "openid fhirUser launch launch/patient online_access offline_access "
        "user/*.cruds patient/*.cruds",
    )
    return server


@pytest.fixture
async def ehr(mongo_uri: str) -> AsyncIterator[SmartServer]:
    """fhirgoal in smart mode with the demo data: the EHR, its FHIR server and the app's host."""
    async with run_smart(mongo_uri) as server:
        yield await with_demo(server)


def cli_launch(server: SmartServer, patient: str) -> str:
    """`fhirgoal launch --patient ID` against the server's database, as an EHR integration
    would run it: the printed `launch` value."""
    env = {
        **os.environ,
        "MONGODB_URI": server.settings.mongodb_uri or "",
        "FHIRGOAL_DB": server.settings.db,
        "FHIRGOAL_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "fhirgoal.cli", "launch", "--patient", patient],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


async def sign_in(page: Any, username: str = CLINICIAN, password: str = PASSWORD) -> None:
    """The built-in authorization server's login and consent pages, as a clinician fills them."""
    await page.get_by_label("User name").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/auth/login")


async def approve(page: Any, patient: str | None = None) -> None:
    if patient is not None:
        await page.get_by_label("Patient").select_option(patient)
    await page.get_by_role("button", name="Allow").click()


async def axe_violations(page: Any, axe_source: str) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations of the page (WCAG 2.1 A and AA rules)."""
    # evaluated through the DevTools protocol: the app's CSP rightly refuses inline scripts
    await page.evaluate(axe_source)
    result = await page.evaluate(
        "async () => await axe.run(document, {runOnly: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']})"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def open_patient(page: Any, server: SmartServer, patient: str) -> str:
    """An EHR launch of the app on `patient`, signed in and consented; the overview's URL."""
    from urllib.parse import quote

    launch = cli_launch(server, patient)
    await page.goto(f"{server.origin}/app/launch?iss={quote(server.base)}&launch={quote(launch)}")
    await sign_in(page)
    await approve(page)
    await page.wait_for_url("**/app/c/*/")
    url: str = page.url
    return url
