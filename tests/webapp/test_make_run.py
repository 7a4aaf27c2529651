"""`make run` (`fhirgoal serve --demo` with the built-in authorization server) prints a demo login
and an EHR-launch link, and the two open the clinician app on a demo client in a browser."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

from tests.auth.conftest import TEST_KEK
from tests.serve_process import ServeProcess
from tests.webapp.conftest import approve, sign_in


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve_demo_prints_a_login_and_a_launch_link_that_open_the_app(
    tmp_path: Path, page: Any
) -> None:
    server = ServeProcess(
        tmp_path,
        _free_port(),
        env={"FHIRGOAL_AUTH": "smart", "FHIRGOAL_KEY_ENCRYPTION_KEY": TEST_KEK},
        options=["--demo"],
    )
    await asyncio.to_thread(server.start, 180.0)
    try:
        log = server.log_text()
        login = re.search(r"clinician app: (\S+)\s+\(sign in as (\S+) / (\S+)\)", log)
        link = re.search(r"EHR launch of demo-blair \(valid for an hour\): (\S+)", log)
        assert login and link, log[-2000:]
        assert login.group(1) == f"{server.origin}/app/"
        await page.goto(link.group(1))
        await sign_in(page, login.group(2), login.group(3))
        await approve(page)
        await page.wait_for_url("**/app/c/*/")
        assert "Blair" in await page.locator(".patient-banner").inner_text()
        assert await page.locator('figure[data-chart="ors"] .pt').count() == 12
    finally:
        await asyncio.to_thread(server.stop)
