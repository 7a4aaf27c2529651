"""Every benchmark script starts: `python bench/X.py --help` exits 0.

CI never times anything (the figures come from quiet-machine runs, see bench/harness.py), but a
bench that no longer imports is found only when somebody needs its figures: two were, in session 7
(written against a module that had moved). Running `--help` imports the script and everything it
imports, and parses its arguments, without starting a database.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Modules the scripts import, not scripts themselves.
LIBRARIES = {"harness.py", "loadgen.py"}
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name not in LIBRARIES)


def test_the_bench_folder_has_scripts() -> None:
    assert len(SCRIPTS) >= 10, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_starts(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
