"""Epoch checkpoints wired into trials (issue 14 §1): a trial that dies after epoch 2 of 4 resumes
from its checkpoint into the same MLflow run, and ends with the numbers and the history of an
uninterrupted run (CPU, same seed). Crashes are retried ``resources.max_failures`` times; user
errors are not. The flaky trials come from ``tests/fixtures/flaky_method``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftbench import run_state, tracking
from peftbench.cli import main
from peftbench.owner import Owner, this_process
from peftbench.train import checkpointing
from peftbench.tune_trial import RESUMED_TAG, RESUMES_TAG
from tests.conftest import micro_suite

FLAKY = str(Path(__file__).resolve().parent / "fixtures" / "flaky_method")
HISTORIES = ("train/loss", "val/mIoU", "lr")


def _flaky(folder: Path, label: str, how: str = "exit", die_at: int = 3) -> dict:
    """die_at 3: one step per epoch, so it dies in epoch 3, after epoch 2's checkpoint."""
    return {"name": "flaky", "label": label,
            "settings": {"how": how, "die_at": die_at, "marker": str(folder / f"{label}.marker")}}


def _write(folder: Path, methods: list[dict], **resources) -> str:
    suite = micro_suite("resume", methods=methods, methods_dir=[FLAKY], resources={"cpus_per_trial": 1, **resources},
                        train={"epochs": 4, "batch_size": 2, "grid_size": 0.1})
    (folder / "s.yaml").write_text(yaml.safe_dump(suite))
    return "s.yaml"


def _runs(uri: str) -> dict:
    c = tracking.client(uri)
    runs = c.search_runs([c.get_experiment_by_name("resume").experiment_id])
    assert len({r.data.tags["peftbench.method"] for r in runs}) == len(runs)  # one run per trial
    return {r.data.tags["peftbench.method"]: r for r in runs}


def _history(uri: str, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in tracking.client(uri).get_metric_history(run.info.run_id, key)]


def _same_as_uninterrupted(uri: str, resumed, whole) -> None:
    assert resumed.info.status == "FINISHED" and resumed.data.tags[RESUMED_TAG] == "2"
    for key in HISTORIES:  # continuous, each epoch once, the uninterrupted run's values
        assert sorted(_history(uri, resumed, key)) == sorted(_history(uri, whole, key)), key
        assert [s for s, _ in sorted(_history(uri, resumed, key))] == [1, 2, 3, 4], key
    tested = {k: v for k, v in whole.data.metrics.items() if k.startswith("test/")}
    assert tested and {k: resumed.data.metrics[k] for k in tested} == tested  # exact on CPU


@pytest.mark.slow
def test_crashed_trials_resume_from_their_checkpoint_and_a_user_error_is_not_retried(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite = _write(tmp_path, [_flaky(tmp_path, "whole", die_at=0), _flaky(tmp_path, "killed", "exit"),
                              _flaky(tmp_path, "crashed", "raise"), _flaky(tmp_path, "wrong", "user")])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", suite, "--tracking-uri", uri]) == 1  # the user error
    out = capsys.readouterr().out
    assert "FAILED wrong/synthetic-target/full/s0: flaky: a user error; fix the suite" in out, out
    runs = _runs(uri)
    assert set(runs) == {"whole", "killed", "crashed", "wrong"}
    whole = runs["whole"]
    assert whole.info.status == "FINISHED" and RESUMED_TAG not in whole.data.tags
    for label in ("killed", "crashed"):  # Ray restarted them from the checkpoint of epoch 2
        _same_as_uninterrupted(uri, runs[label], whole)
        assert runs[label].data.tags[RESUMES_TAG] == "1" and "peftbench.error" not in runs[label].data.tags
    wrong = runs["wrong"]  # not retried: a retry would have passed (its marker exists) and FINISHED
    assert wrong.info.status == "FAILED" and "a user error" in wrong.data.tags["peftbench.error"]
    assert RESUMED_TAG not in wrong.data.tags
    folder = Path(runs["killed"].data.tags[tracking.CHECKPOINTS_TAG])
    kept = sorted(checkpointing.read_meta(p)["epoch"] for p in folder.glob("checkpoint_*"))
    assert kept == [3, 4]  # Ray keeps the newest two


@pytest.mark.slow
def test_an_unfinished_trial_continues_at_the_next_run_and_is_not_counted_meanwhile(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite = _write(tmp_path, [_flaky(tmp_path, "whole", die_at=0), _flaky(tmp_path, "killed", "exit")],
                   max_failures=0)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", suite, "--tracking-uri", uri]) == 1  # no retry: the dead worker fails the trial
    killed = _runs(uri)["killed"]
    assert killed.info.status == "FAILED" and "process died" in killed.data.tags["peftbench.error"]
    assert [s for s, _ in _history(uri, killed, "train/loss")] == [1, 2]
    from peftbench.report import load_runs
    from peftbench.report.tables import latest_finished

    assert list(latest_finished(load_runs(uri, "resume"))["method"]) == ["whole"]  # never counted half-done
    # As after `kill -9` of the driver: RUNNING, its owner and driver gone (the next run marks it KILLED).
    c = tracking.client(uri)
    c.update_run(killed.info.run_id, status="RUNNING")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = Owner(this_process().host, child.pid, "1").token
    c.set_tag(killed.info.run_id, tracking.OWNER_TAG, gone)
    c.set_tag(killed.info.run_id, tracking.DRIVER_TAG, gone)
    assert run_state.checkpoints_to_resume(uri, "resume") == {}  # a RUNNING run is not resumed from outside

    capsys.readouterr()
    assert main(["run", suite, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "1 unfinished trial(s) continue from their last checkpoint" in out
    runs = _runs(uri)
    assert runs["killed"].info.run_id == killed.info.run_id  # the same run, continued
    _same_as_uninterrupted(uri, runs["killed"], runs["whole"])


def test_checkpoints_come_every_n_epochs_else_at_each_validation(tmp_path, monkeypatch):
    from peftbench.suite import parse_suite, trial_specs
    from peftbench.train.trial import _Discard, run_trial

    monkeypatch.chdir(tmp_path)
    raw = micro_suite("every", train={"epochs": 4, "batch_size": 2, "grid_size": 0.1, "eval_every": 2})
    spec = trial_specs(parse_suite(raw, str(tmp_path / "s.yaml")))[0]
    for every, expected in ((None, [2, 4]), (3, [3])):
        saved: list[int] = []
        run_trial(spec, _Discard(), lambda metrics, state: state and saved.append(state["epoch"]),
                  checkpoint_every=every)
        assert saved == expected, every
