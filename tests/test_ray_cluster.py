"""`peftbench run --address`: trials on an existing two-node Ray cluster (real raylets on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from peftbench import ray_cluster
from peftbench.cli import main
from peftbench.errors import PeftbenchError
from tests.conftest import micro_suite

SUITE = micro_suite("clustered", seeds=[0, 1], train={"epochs": 1, "batch_size": 2, "grid_size": 0.1})


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head and a worker node, one CPU each: two 1-CPU trials can only run on different nodes."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)  # set by a local run in this process
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_a_suite_runs_on_both_nodes_of_an_existing_cluster(two_node_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SUITE))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # `peftbench run` in its own process, as from a shell: a driver that ran a private Ray before
    # (another test in this process) is not what joins clusters.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ray_cluster.source_root()),
                                                                      os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "peftbench", "run", "s.yaml", "--tracking-uri", uri,
                           "--address", two_node_cluster.address], env=env, capture_output=True, text=True,
                          timeout=540)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 node(s), 2 CPUs" in done.stdout

    from peftbench import tracking

    c = tracking.client(uri)
    runs = c.search_runs([c.get_experiment_by_name("clustered").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["peftbench.node_id"] for r in runs}) == 2  # one trial per node
    # The cluster outlives the run: peftbench only disconnected from it.
    assert len([n for n in two_node_cluster.list_all_nodes() if n.remaining_processes_alive()]) == 2


def test_a_cluster_that_is_not_there_is_one_line(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(PeftbenchError, match="cannot join the Ray cluster at '127.0.0.1:9'"):
        with ray_cluster.joined("127.0.0.1:9", 0, print):
            pass


def test_a_worker_that_cannot_see_the_data_names_node_and_path(tmp_path):
    spec = {"dataset": {"root": str(tmp_path / "not-mounted")}, "backbone": {"checkpoint": None}, "methods_dir": []}
    with pytest.raises(PeftbenchError, match=r"cannot see the dataset root .*not-mounted; put it on a filesystem"):
        ray_cluster.check_visible(spec)
    spec["dataset"]["root"] = str(tmp_path)
    ray_cluster.check_visible(spec)


def test_address_comes_from_the_flag_else_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_cluster.cluster_address(None) == "10.0.0.1:6379"
    assert ray_cluster.cluster_address("auto") == "auto"
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_cluster.cluster_address(None) is None
