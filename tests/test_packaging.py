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


def test_each_cuda_extra_is_spconv_of_its_line_plus_the_suite():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cuda = {name: deps for name, deps in extras.items() if name.startswith("cu")}
    assert {"cu120", "cu126"} <= set(cuda)  # the design card's line and a current one
    readme = (REPO / "README.md").read_text()
    for name, deps in cuda.items():
        assert any(d.startswith(f"spconv-{name}==") for d in deps) and "peftbench[suite]" in deps, name
        assert f"`{name}`" in readme, f"README's GPU install lists no {name}"
