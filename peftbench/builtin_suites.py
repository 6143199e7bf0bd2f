"""Built-in suites: the repo's ``suites/*.yaml``, shipped in the wheel as ``peftbench/suites``.

``peftbench run demo`` (or ``suites/demo.yaml``) uses the working folder's file when there is one,
else the built-in suite of that name, so a pip-installed peftbench runs from an empty folder. Paths
inside a suite (data roots, caches) stay relative to the working folder, not to the shipped file.
"""

from __future__ import annotations

import re
from pathlib import Path

from peftbench.errors import PeftbenchError
from peftbench.registry import shipped_folder

BUILTIN_SUITES_DIR = shipped_folder("suites")
_SUFFIXES = (".yaml", ".yml")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def builtin_suites() -> dict[str, Path]:
    """Name -> file of every built-in suite, sorted by name."""
    if not BUILTIN_SUITES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(BUILTIN_SUITES_DIR.iterdir()) if p.suffix in _SUFFIXES}


def locate_suite(arg: str | Path) -> Path:
    """The suite file ``arg`` names: a file as given, ``NAME.yaml`` or ``suites/NAME.yaml`` in the
    working folder, else the built-in suite ``NAME`` (also for ``suites/NAME.yaml`` when that file
    is absent, as the README's commands write it)."""
    path = Path(arg)
    if path.is_file():
        return path
    bare = path.suffix not in _SUFFIXES and len(path.parts) == 1
    if bare:
        for local in (Path(f"{arg}.yaml"), Path("suites") / f"{arg}.yaml"):
            if local.is_file():
                return local
    named_like_builtin = bare or (path.suffix in _SUFFIXES and path.parent in (Path("."), Path("suites")))
    shipped = builtin_suites()
    if named_like_builtin and path.stem in shipped:
        return shipped[path.stem]
    known = ", ".join(shipped) or "none"
    raise PeftbenchError(f"suite file not found: {arg} (built-in suites: {known}; `peftbench suites` lists them)")


def required_variables(path: Path) -> list[str]:
    """Environment variables a suite file names (``${SCANNET_ROOT}``), in order of first use,
    ignoring comment text."""
    names: list[str] = []
    for line in path.read_text().splitlines():
        code = line.split("#", 1)[0]
        for match in _VARIABLE.finditer(code):
            name = match.group(1) or match.group(2)
            if name not in names:
                names.append(name)
    return names
