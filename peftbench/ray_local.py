"""Start (and stop) the local Ray cluster of one `peftbench run`: closed to the network, scratch
under the cache folder, and no Ray process outliving the run.

* Loopback only: a local head names itself by ``services.get_node_ip_address()``, which returns
  the machine's external address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is false (Ray's
  ``ray_constants.ENABLE_RAY_CLUSTER``; then it is 127.0.0.1). ``ray.init(_node_ip_address=
  "127.0.0.1")`` is not enough: ``resolve_ip_for_localhost`` maps a loopback address back to that
  same external address. With the node IP at 127.0.0.1, GCS, raylet, agents and workers listen on
  loopback only (Ray binds its servers to the node IP since ray-project/ray#55298, #55484).
* Ray's token authentication stays on (Ray's default; ``RAY_AUTH_MODE=disabled`` turns it off).
* A watchdog process (``peftbench.ray_reaper``) kills the cluster when the driver ends, whatever
  the way; clusters recorded by a driver that is gone are reaped at the next start.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peftbench.cache import cache_dir, writable_dir
from peftbench.owner import this_process
from peftbench.ray_reaper import reap_stale

# Ray puts sockets under <temp>/session_<date>_<time>_<pid>/sockets/; AF_UNIX paths end at 107 bytes.
_MAX_TEMP_DIR = 40


def ray_folders() -> tuple[Path, Path]:
    """(Ray's storage folder, Ray's temp folder) under the cache; the temp folder moves to a short
    path in the system temp folder when the cache path is too long for Ray's socket names."""
    root = writable_dir(cache_dir().resolve() / "ray", "cache")
    temp = cache_dir().resolve() / "ray-tmp"
    if len(str(temp)) > _MAX_TEMP_DIR:
        temp = Path(tempfile.gettempdir()) / f"peftbench-{hashlib.sha256(str(temp).encode()).hexdigest()[:10]}"
    return root, writable_dir(temp, "cache")


def _loopback_only() -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray's processes at import
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # this process may have imported Ray already


@contextmanager
def local_ray(num_gpus: int | None) -> Iterator[Path]:
    """A local Ray cluster for the ``with`` block; yields Ray's storage folder."""
    storage, temp = ray_folders()
    clusters = storage / "clusters"
    clusters.mkdir(exist_ok=True)
    reap_stale(clusters)
    _loopback_only()
    import ray

    me = this_process()
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    watchdog = subprocess.Popen([sys.executable, "-m", "peftbench.ray_reaper", me.token,
                                 str(clusters / f"cluster-{me.pid}.json")],
                                stdin=subprocess.PIPE, env=env, start_new_session=True)
    try:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR",
                 num_gpus=num_gpus, _temp_dir=str(temp))
        try:
            yield storage
        finally:
            ray.shutdown()
    finally:
        watchdog.stdin.close()  # end of file: the watchdog kills what is left of the cluster, then exits
        watchdog.wait(timeout=30)
