"""pyproject lists packages by hand (package-dir mappings are invisible to packages.find): every
subpackage of peftbench/ must be listed, or the wheel silently lacks it."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_subpackage_ships_in_the_wheel():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "peftbench").rglob("__init__.py")}
    assert found - listed == set(), f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert tool["package-dir"] == {"peftbench.methods": "methods", "peftbench.suites": "suites"}
    assert {"peftbench.methods", "peftbench.suites"} <= listed
    assert (REPO / "methods").is_dir() and not (REPO / "peftbench" / "methods").exists()
