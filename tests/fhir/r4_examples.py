"""The R4 specification's examples: npm package hl7.fhir.r4.examples 4.0.1 (CC0), as test data.

https://hl7.org/fhir/R4/downloads.html publishes every example of the specification; the npm
registry serves them as this package. The tarball is downloaded once (Python's urllib, no npm
needed), checked against the integrity the registry publishes for it (sha512, hard-coded below:
a tarball that differs is refused, never used) and kept in ~/.cache/fhirgoal/ (or
$FHIRGOAL_CACHE_DIR). A failed download is an error that says so: the tests that need the
examples fail rather than skip (CI reaches the registry).

    python -m tests.fhir.r4_examples     # fetch into the cache (and print where)
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

PACKAGE = "hl7.fhir.r4.examples"
VERSION = "4.0.1"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
# `dist.integrity` of hl7.fhir.r4.examples@4.0.1 in the npm registry (`npm view ... dist`).
INTEGRITY = "sha512-DXBdIZOeQaSKIgCU7w6HOC7sw/6BzylmipLkBW4f//pT+Bc94x+8LImwTdvaNThPJoOzpBzvxAzNqjeu3X/zLw=="
DOWNLOAD_TIMEOUT = 120.0
# Files of the package that are not resources.
_NOT_RESOURCES = {"package.json", ".index.json"}


class ExamplesUnavailable(RuntimeError):
    """The examples could not be had (download failed, or the tarball is not the published one)."""


def cache_dir() -> Path:
    configured = os.environ.get("FHIRGOAL_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "fhirgoal"


def _sha512_integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def tarball() -> Path:
    """The verified tarball in the cache, downloaded first if it is not there (or not intact)."""
    path = cache_dir() / f"{PACKAGE}-{VERSION}.tgz"
    if path.is_file() and _sha512_integrity(path.read_bytes()) == INTEGRITY:
        return path
    try:
        with urllib.request.urlopen(TARBALL_URL, timeout=DOWNLOAD_TIMEOUT) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise ExamplesUnavailable(
            f"could not download the R4 examples from {TARBALL_URL}: {error}. The test needs "
            f"them; put the tarball at {path} (or set FHIRGOAL_CACHE_DIR) to run offline."
        ) from error
    found = _sha512_integrity(data)
    if found != INTEGRITY:
        raise ExamplesUnavailable(
            f"{TARBALL_URL} is not the published package: integrity {found}, expected {INTEGRITY}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as partial:
        partial.write(data)
    os.replace(partial.name, path)  # readers never see half a file
    return path


def raw_examples() -> dict[str, bytes]:
    """Every resource file of the package as sent on the wire: its bytes, by file name."""
    found: dict[str, bytes] = {}
    with tarfile.open(tarball()) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or not name.endswith(".json") or name in _NOT_RESOURCES:
                continue
            handle = tar.extractfile(member)
            if handle is not None:
                found[name] = handle.read()
    return found


if __name__ == "__main__":
    print(tarball())
