"""Every example in ``examples/`` runs to completion, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(example: Path, tmp_path: Path) -> None:
    """The example exits with status 0 and prints something."""
    env = {**os.environ, "LEXIGRAM_EXAMPLE_DIR": str(tmp_path), "PYTHONDEVMODE": "1"}
    result = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr


def test_examples_exist() -> None:
    """The documented examples are present."""
    names = {path.name for path in EXAMPLES}
    assert {"order_fulfillment.py", "recovery_after_crash.py", "travel_booking.py"} <= names
