"""Search, then final seeds: the grid, per-method ASHA groups, the choice from MLflow, final runs, resume."""

from __future__ import annotations

import json
import types

import pytest
import yaml

from peftbench.cli import main
from peftbench.errors import PeftbenchError
from peftbench.search import grouped_asha, search_specs, searches
from peftbench.search_config import parse_search
from peftbench.suite import parse_suite
from tests.conftest import MICRO

SUITE = {
    "name": "searched",
    "backbone": {"config": "tiny", "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in MICRO.items()}},
    "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt", "scenes": {"train": 2, "val": 1},
                  "points_per_m2": 15}],
    "methods": ["linear"],
    "seeds": [0],
    "search": {"lr": [0.0, 0.05], "metric": "val/mIoU", "scheduler": "asha", "seeds": [0]},
    "final": {"seeds": [0, 1]},
    "train": {"epochs": 2, "batch_size": 1, "grid_size": 0.1},
    "resources": {"max_concurrent": 1},
}


def test_search_section_is_validated_and_spans_a_grid(tmp_path):
    spec = parse_search({"lr": [1e-3, 1e-2], "weight_decay": [0.0, 0.05], "seeds": [0, 1]}, "s.yaml: search")
    assert spec.points()[1] == {"lr": 1e-3, "weight_decay": 0.05} and len(spec.points()) == 4
    with pytest.raises(PeftbenchError, match=r"search.learning_rate: neither a training setting"):
        parse_search({"learning_rate": [1e-3]}, "s.yaml: search")
    with pytest.raises(PeftbenchError, match=r"search.lr: give the values to try as a non-empty list"):
        parse_search({"lr": 1e-3}, "s.yaml: search")
    with pytest.raises(PeftbenchError, match=r"search.scheduler"):
        parse_search({"lr": [1e-3], "scheduler": "pbt"}, "s.yaml: search")
    raw = {"name": "x", "datasets": [{"name": "synthetic", "root": str(tmp_path)}],
           "methods": ["linear", {"name": "gem", "search": {"lr": [0.1, 0.2, 0.3]}}], "search": {"lr": ["fast"]}}
    with pytest.raises(PeftbenchError, match=r"methods\[0\]: search .*lr"):
        parse_suite(raw, "x.yaml")
    raw["search"] = {"lr": [0.01], "seeds": [3, 4]}
    suite = parse_suite(raw, "x.yaml")
    specs = search_specs(suite)
    # linear: 1 point x 2 seeds; gem overrides the grid (3 points) and keeps the suite's seeds.
    assert [s["method"]["label"] for s in specs].count("gem") == 6 and len(specs) == 8
    assert {s["stage"] for s in specs} == {"search"} and len({s["fingerprint"] for s in specs}) == 8
    assert all(s["train"]["test_protocol"] == "single" for s in specs)


def _trial(trial_id: str, label: str, dataset: str = "d") -> types.SimpleNamespace:
    spec = {"method": {"label": label}, "dataset": {"label": dataset}, "split": "full", "train": {"epochs": 9}}
    return types.SimpleNamespace(trial_id=trial_id, config={"spec": spec})


def test_asha_judges_a_trial_only_against_its_own_method():
    from ray.tune.schedulers import TrialScheduler

    plan = searches(parse_suite({**SUITE, "methods": ["linear", "gem"]}, "s.yaml"))
    trials = [_trial("g1", "gem"), _trial("g2", "gem"), _trial("l1", "linear")]
    asha = grouped_asha([t.config["spec"] for t in trials], plan)
    for t in trials:
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, trials[0], {"epoch": 1, "val/mIoU": 0.6}) == TrialScheduler.CONTINUE
    # The weak linear probe is alone in its group: not stopped by GEM's better score ...
    assert asha.on_trial_result(None, trials[2], {"epoch": 1, "val/mIoU": 0.2}) == TrialScheduler.CONTINUE
    # ... while a GEM trial below GEM's rung is.
    assert asha.on_trial_result(None, trials[1], {"epoch": 1, "val/mIoU": 0.3}) == TrialScheduler.STOP


def _runs(uri: str, stage: str):
    from peftbench import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name("searched")
    return c.search_runs([exp.experiment_id], f"tags.`peftbench.stage` = '{stage}'")


@pytest.mark.slow
def test_search_chooses_from_mlflow_then_runs_final_seeds_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SUITE))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", "s.yaml", "--tracking-uri", uri]) == 0

    search = _runs(uri, "search")
    assert len(search) == 2 and all(r.info.status == "FINISHED" for r in search)
    best = max(search, key=lambda r: r.data.metrics["val/mIoU"])
    final = _runs(uri, "final")
    assert sorted(r.data.tags["peftbench.seed"] for r in final) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in final)
    chosen = json.loads(best.data.tags["peftbench.search_point"])
    assert all(json.loads(r.data.tags["peftbench.search_choice"]) == chosen for r in final)
    assert all(float(r.data.params["train.lr"]) == chosen["lr"] for r in final)
    assert all(r.data.params["stage"] == "final" and "test/mIoU" in r.data.metrics for r in final)
    for run in search:  # a trial ASHA stopped is FINISHED with fewer epochs, and marked
        if run.data.tags.get("peftbench.stopped_early"):
            from peftbench import tracking

            assert len(tracking.client(uri).get_metric_history(run.info.run_id, "train/loss")) < 2

    capsys.readouterr()
    assert main(["run", "s.yaml", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 trials already FINISHED" in out and out.count("already FINISHED") == 2  # search, final
    assert len(_runs(uri, "search")) == 2 and len(_runs(uri, "final")) == 2
