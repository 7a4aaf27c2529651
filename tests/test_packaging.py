"""The package carries its built-in data (fhirgoal/conformance, fhirgoal/profiles).

A wheel is built from exactly what docker/Dockerfile copies into the image, installed NON-editably
into a fresh virtualenv, and `fhirgoal serve` (the venv's console script) is started from another
directory: it must serve the built-in ORS Questionnaire and the GAS profiles. The fresh venv gets
the project's dependencies from the running interpreter's site-packages (a .pth file), which keeps
the test fast and offline; the wheel build itself needs the setuptools of pyproject's
[build-system] (pip fetches it from the configured index, as `pip install .` in the image does).
Docker is not needed: the Dockerfile is read instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fhirgoal.config import BUILTIN_CONFORMANCE_DIR, BUILTIN_PROFILES_DIR, Settings
from fhirgoal.fhir.catalog import read_catalog
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.store.embedded import free_port
from tests.serve_process import ServeProcess

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
ORS = "https://fhirgoal.org/fhir/Questionnaire/ors"
GAS_GOAL = "https://fhirgoal.org/fhir/StructureDefinition/gas-goal"

embedded_only = pytest.mark.skipif(
    bool(os.environ.get("MONGODB_URI")), reason="serves from the embedded database"
)


def dockerfile_instructions() -> list[tuple[str, list[str]]]:
    """(instruction, arguments) of each Dockerfile line, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split()[0].upper(), shlex.split(line)[1:])
        for line in lines
        if line and not line.startswith("#")
    ]


def docker_copies() -> list[str]:
    """The repository paths the image COPYs (each to the same path under its WORKDIR)."""
    sources = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY":
            *srcs, dest = args
            assert not any(a.startswith("--from") for a in srcs), "copies from another stage"
            for src in srcs:
                assert dest in ("./", f"./{src}"), f"COPY {src} {dest}: not to the same path"
                sources.append(src)
    return sources


def test_the_data_lives_inside_the_package() -> None:
    package = REPO / "fhirgoal"
    assert Settings().conformance_dir == BUILTIN_CONFORMANCE_DIR
    assert Settings().profiles_dir == BUILTIN_PROFILES_DIR
    # the package the tests import is this checkout's, so its data is this checkout's data
    assert package / "conformance" == BUILTIN_CONFORMANCE_DIR
    assert package / "profiles" == BUILTIN_PROFILES_DIR
    assert (BUILTIN_CONFORMANCE_DIR / "resource-types.json").is_file()
    assert any(r.get("url") == ORS for r in read_catalog(BUILTIN_PROFILES_DIR))


def test_the_docker_image_ships_the_package_with_its_data() -> None:
    copies = docker_copies()
    assert "fhirgoal" in copies  # the package, data directories included
    assert "pyproject.toml" in copies  # with its package-data declaration
    instructions = dockerfile_instructions()
    installs = [args for i, args in instructions if i == "RUN" and args[:2] == ["pip", "install"]]
    assert installs and "." in installs[0] and "-e" not in installs[0]  # non-editable
    assert "--editable" not in installs[0]
    # nothing points the server at data outside the installed package
    env = " ".join(" ".join(args) for i, args in instructions if i == "ENV")
    assert "FHIRGOAL_CONFORMANCE_DIR" not in env
    assert "FHIRGOAL_PROFILES_DIR" not in env
    # and the data is inside what is copied (the wheel test below builds from the same copies)
    for data in (BUILTIN_CONFORMANCE_DIR, BUILTIN_PROFILES_DIR):
        assert data.relative_to(REPO).parts[0] in copies


def test_a_missing_or_empty_data_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no conformance directory"):
        load_conformance(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"resource-types\.json"):
        load_conformance(tmp_path)
    with pytest.raises(FileNotFoundError, match="no profiles directory"):
        read_catalog(tmp_path / "missing")
    (tmp_path / "README.md").write_text("no resources here")
    with pytest.raises(FileNotFoundError, match="no resources in"):
        read_catalog(tmp_path)


def run(*command: str | Path, **kwargs: object) -> str:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs
    )  # type: ignore[call-overload]
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return str(done.stdout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel built from the Docker image's copies installed in it."""
    root = tmp_path_factory.mktemp("packaging")
    context = root / "context"
    for source in docker_copies():
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, context / source, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc"))  # fmt: skip
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(REPO / source, context / source)
    run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", root / "wheels", context
    )
    (wheel,) = (root / "wheels").glob("fhirgoal-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel)
    # the dependencies: this interpreter's site-packages, after the venv's own
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
    (Path(purelib.strip()) / "_fhirgoal_test_dependencies.pth").write_text("\n".join(lines) + "\n")
    return venv


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (the tests run with the checkout on it) and no MONGODB_URI."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MONGODB_URI")}
    return {**env, **extra}


def test_the_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = run(
        installed / "bin" / "python", "-c",
        "import fhirgoal, fhirgoal.config as c; "
        "print(fhirgoal.__file__); print(c.BUILTIN_CONFORMANCE_DIR); print(c.BUILTIN_PROFILES_DIR)",
        cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    package, conformance, profiles = (Path(line) for line in where.split())
    site_packages = installed.resolve() / "lib"
    assert package.resolve().is_relative_to(site_packages), package
    assert "site-packages" in package.parts
    assert conformance == package.parent / "conformance" and conformance.is_dir()
    assert profiles == package.parent / "profiles"
    assert (profiles / "questionnaires" / "ors.json").is_file()


def test_the_installed_package_carries_the_mappings(installed: Path, tmp_path: Path) -> None:
    """`fhirgoal mapping test` of a shipped mapping, by name, from the installed package."""
    output = run(installed / "bin" / "fhirgoal", "mapping", "test", "example-ehr",
                 cwd=tmp_path, env=clean_env())  # fmt: skip
    assert "example-ehr:" in output and " 0 failed" in output
    assert "site-packages" in run(installed / "bin" / "python", "-c",
        "from fhirgoal.config import BUILTIN_MAPPINGS_DIR as d; print(d)", cwd=tmp_path,
        env=clean_env())  # fmt: skip


@embedded_only
def test_installed_serve_from_another_directory_serves_the_built_in_data(
    installed: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # an empty PYTHONPATH is no PYTHONPATH: the checkout is not on the path
    server = ServeProcess(
        tmp_path / "data", free_port(), env={"FHIRGOAL_AUTH": "off", "PYTHONPATH": ""},
        program=[str(installed / "bin" / "fhirgoal")], cwd=elsewhere,
    )  # fmt: skip
    server.start()
    try:
        questionnaires = httpx.get(f"{server.base}/Questionnaire", params={"url": ORS}).json()
        assert [e["resource"]["name"] for e in questionnaires["entry"]] == ["OutcomeRatingScale"]
        profiles = httpx.get(f"{server.base}/StructureDefinition", params={"url": GAS_GOAL}).json()
        assert [e["resource"]["url"] for e in profiles["entry"]] == [GAS_GOAL]
        gas = httpx.get(f"{server.base}/StructureDefinition", params={"name": "FhirgoalGas"}).json()
        assert len(gas["entry"]) == 3  # goal, rating, T-score
    finally:
        assert server.stop() == 0


@embedded_only
def test_an_empty_profiles_directory_stops_serve(installed: Path, tmp_path: Path) -> None:
    empty = tmp_path / "profiles"
    empty.mkdir()
    done = subprocess.run(
        [installed / "bin" / "fhirgoal", "serve", "--port", str(free_port()),
         "--data-dir", tmp_path / "data"],
        cwd=tmp_path, env=clean_env(FHIRGOAL_AUTH="off", FHIRGOAL_PROFILES_DIR=str(empty)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"no resources in {empty}" in done.stdout + done.stderr
