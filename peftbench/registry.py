"""Method registry: ``@register`` on a Method class; plugins are found in ``methods/``, in any
folder a suite or ``--methods-dir`` names, and in the ``peftbench.methods`` entry-point group."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from peftbench.errors import PeftbenchError
from peftbench.method import Method

_PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_folder(name: str) -> Path:
    """A folder that lives at the top of the repo but ships inside the wheel (``peftbench/<name>``):
    the installed copy first, else the checkout's (editable installs, ``PYTHONPATH=.``)."""
    shipped = _PACKAGE_DIR / name
    return shipped if shipped.is_dir() else _PACKAGE_DIR.parent / name


BUILTIN_METHODS_DIR = shipped_folder("methods")
_REGISTRY: dict[str, type[Method]] = {}
_LOADED_DIRS: set[Path] = set()


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method under its lowercase ``name``."""
    name = cls.name
    if not name or name != name.lower():
        raise PeftbenchError(f"method class {cls.__name__} needs a lowercase `name`")
    other = _REGISTRY.get(name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise PeftbenchError(f"two methods are named {name!r}: {other.__module__} and {cls.__module__}")
    # Variants of one method in one file (GEM's SA-only / CA-only) share a prefix; others may not.
    clash = [m.name for m in _REGISTRY.values() if cls.prefix and m.prefix == cls.prefix and m.name != name
             and m.__module__ != cls.__module__]
    if clash:
        raise PeftbenchError(f"method {name!r} uses parameter prefix {cls.prefix!r}, already used by {clash[0]!r}")
    _REGISTRY[name] = cls
    return cls


def discover(extra_dirs: Iterable[str | Path] = ()) -> None:
    """Import every plugin file once (built-in folder, extra folders, entry points)."""
    for folder in [BUILTIN_METHODS_DIR, *map(Path, extra_dirs)]:
        folder = folder.resolve()
        if folder in _LOADED_DIRS:
            continue
        if not folder.is_dir():
            raise PeftbenchError(f"methods folder not found: {folder} (check methods_dir / --methods-dir)")
        _LOADED_DIRS.add(folder)
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                _import_file(path)
    for entry in metadata.entry_points(group="peftbench.methods"):
        entry.load()


def _import_file(path: Path) -> None:
    module_name = f"peftbench_plugins.{path.parent.name}.{path.stem}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except PeftbenchError:
        raise
    except Exception as err:
        del sys.modules[module_name]
        raise PeftbenchError(f"method plugin {path} failed to import: {type(err).__name__}: {err}") from err


def available_methods() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    discover()
    if name not in _REGISTRY:
        raise PeftbenchError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_method(name: str, settings: dict | None = None) -> Method:
    cls = get_method(name)
    return cls(**(settings or {}))
