"""Where Ray Tune runs: a private Ray on this host, or an existing cluster (``--address``, ``RAY_ADDRESS``).

On a cluster, the code travels with the job (Ray's runtime env: this source tree with ``methods/``,
or the installed package), so nodes need only the same Python environment. Data, backbone
checkpoints and the suite's Ray storage are read where the suite names them: a filesystem every
node mounts. A trial that cannot see one stops with a message naming the node and the path.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peftbench
from peftbench.errors import PeftbenchError

# Never shipped with the code: data, caches, tracking stores, results (Ray also honours .gitignore).
_EXCLUDES = [".git", ".venv", "data", ".cache", "mlruns", "mlartifacts", "reports", "runs", "ray_results",
             "*.db", "*.pth", ".gpu", ".reference", "__pycache__"]


def cluster_address(flag: str | None) -> str | None:
    """``--address`` if given, else ``RAY_ADDRESS``; None: start a private Ray on this host."""
    return flag or os.environ.get("RAY_ADDRESS") or None


def source_root() -> Path | None:
    """The source tree holding ``peftbench/`` and the built-in ``methods/`` (None for an installed package)."""
    root = Path(peftbench.__file__).resolve().parent.parent
    return root if (root / "methods").is_dir() else None


def runtime_env(methods_dirs: list[str]) -> dict[str, Any]:
    """What Ray ships to every worker of the job: the code, and method folders that are inside it."""
    root = source_root()
    if root is None:
        return {"py_modules": [str(Path(peftbench.__file__).resolve().parent)]}
    return {"working_dir": str(root), "excludes": _EXCLUDES}


def shipped_path(path: str) -> str:
    """A methods folder as a trial sees it: inside the shipped tree it becomes relative (resolved in the
    worker's copy); elsewhere it stays absolute and must be on a shared filesystem."""
    root = source_root()
    resolved = Path(path).resolve()
    if root is not None and resolved.is_relative_to(root):
        return str(resolved.relative_to(root))
    return str(resolved)


@contextlib.contextmanager
def joined(address: str, gpus_per_trial: float, say: Callable[[str], None]) -> Iterator[Path]:
    """Connected to the cluster at ``address`` for the ``with`` block (then disconnected; the cluster
    stays up). Yields the Tune storage folder: ``<cache>/ray``, which every node must see
    (``PEFTBENCH_CACHE`` on a shared filesystem)."""
    import ray

    from peftbench.ray_local import ray_folders

    _check_listening(address)
    try:
        with _loopback_kept(address):
            ray.init(address=address, runtime_env=runtime_env([]), log_to_driver=False, configure_logging=True,
                     logging_level="ERROR")
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise PeftbenchError(f"cannot join the Ray cluster at {address!r} ({type(err).__name__}: {err}); start "
                             "it with `ray start --head` or fix --address / RAY_ADDRESS") from err
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        say(f"Ray: cluster at {address}, {len(nodes)} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")
        if gpus_per_trial > 0:
            check_gpus(gpus_per_trial)
        yield ray_folders()[0]
    finally:
        ray.shutdown()


def _check_listening(address: str) -> None:
    """Fail in seconds where Ray would retry a dead HOST:PORT for minutes (``auto`` is Ray's to find)."""
    if address == "auto" or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except (OSError, ValueError) as err:
        raise PeftbenchError(f"cannot join the Ray cluster at {address!r}: nothing answers there ({err}); start it "
                             "with `ray start --head` or fix --address / RAY_ADDRESS") from err


@contextlib.contextmanager
def _loopback_kept(address: str) -> Iterator[None]:
    """Join a cluster on 127.0.0.1 at 127.0.0.1.

    Ray 2.60 rewrites a loopback address to this host's external one before connecting
    (``ray._private.services.resolve_ip_for_localhost``), but a cluster started with
    ``--node-ip-address 127.0.0.1`` listens on loopback only; the rewrite is off on hosts where
    Ray's cluster mode is off, so it is switched off for the connect.
    """
    host = address.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def check_gpus(gpus_per_trial: float) -> None:
    """On a cluster, some node must offer a trial's GPUs (else Ray would wait forever)."""
    import ray

    largest = max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if gpus_per_trial > largest:
        raise PeftbenchError(f"the suite asks for {gpus_per_trial:g} GPU(s) per trial but the largest node of the "
                             f"cluster has {largest:g}; lower resources.gpus_per_trial or add a larger node")


def check_visible(spec: dict[str, Any]) -> None:
    """In a trial: the data and backbone checkpoint the suite names must exist on this node."""
    paths = {"dataset root": spec["dataset"]["root"]}
    if spec["backbone"].get("checkpoint"):
        paths["backbone checkpoint"] = spec["backbone"]["checkpoint"]
    for i, folder in enumerate(spec.get("methods_dir", [])):
        paths[f"methods_dir[{i}]"] = folder
    for what, path in paths.items():
        if "$" in str(path):
            continue  # ${VAR}: resolved (with its own message) by the data and checkpoint readers
        if not Path(path).exists():
            raise PeftbenchError(f"node {socket.gethostname()} cannot see the {what} {path}; put it on a "
                                 "filesystem every Ray node mounts (same path), or run without --address")
