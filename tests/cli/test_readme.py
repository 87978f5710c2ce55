"""The README's set-up commands stay true: CI runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    setup = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [m.strip() for m in re.findall(r"```sh\n(.*?)\n\s*```", setup, re.S)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    main_job, tests = _readme_commands()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci == tests
    assert "examples/quickstart.py" in main_job and "[test]" not in main_job  # the fast core install
