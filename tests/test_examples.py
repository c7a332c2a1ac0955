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
    assert "never retrieved" not in result.stderr


def test_examples_exist() -> None:
    """The documented examples are present."""
    names = {path.name for path in EXAMPLES}
    assert {
        "order_fulfillment.py",
        "recovery_after_crash.py",
        "travel_booking.py",
        "expense_approval.py",
    } <= names


def test_readme_example_runs(tmp_path: Path) -> None:
    """The README's saga runs as written and prints its outcome and failure."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = readme.split("## A saga in a few lines", 1)[1].split("```python", 1)[1].split("```")[0]
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDEVMODE": "1"},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compensated" in result.stdout
    assert "kind='step_failed'" in result.stdout
    assert "step='charge_payment'" in result.stdout
    assert "never retrieved" not in result.stderr
