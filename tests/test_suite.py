"""Suite validation: every error names the file and the key, before any trial starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftbench.cli import main
from peftbench.errors import PeftbenchError
from peftbench.suite import load_suite, parse_suite, trial_specs
from tests.conftest import micro_suite

BASE = {
    "name": "t",
    "backbone": {"config": "tiny"},
    "datasets": [{"name": "synthetic", "domain": "target", "root": "data/t"}],
    "methods": ["linear", {"name": "gem", "settings": {"rank": 4}}],
    "seeds": [0, 1],
    "train": {"epochs": 2},
}


def _write(tmp_path: Path, suite: dict) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _error(tmp_path: Path, suite: dict) -> str:
    with pytest.raises(PeftbenchError) as err:
        load_suite(_write(tmp_path, suite))
    return str(err.value)


def test_valid_suite_expands_the_grid(tmp_path):
    specs = trial_specs(load_suite(_write(tmp_path, BASE)))
    assert [s["run_name"] for s in specs] == [
        "linear/synthetic-target/full/s0", "linear/synthetic-target/full/s1",
        "gem/synthetic-target/full/s0", "gem/synthetic-target/full/s1"]
    assert len({s["fingerprint"] for s in specs}) == 4
    assert specs[2]["method"]["settings"] == {"rank": 4}
    # The fingerprint depends on the config only: loading twice gives the same hashes.
    again = trial_specs(load_suite(_write(tmp_path, BASE)))
    assert [s["fingerprint"] for s in again] == [s["fingerprint"] for s in specs]


def test_misspelt_key_names_file_and_key(tmp_path):
    msg = _error(tmp_path, {**BASE, "train": {"epocs": 2}})
    assert "suite.yaml: train.epocs: unknown key; did you mean 'epochs'?" in msg


def test_misspelt_top_level_key(tmp_path):
    msg = _error(tmp_path, {**BASE, "seed": [0]})
    assert "suite.yaml" in msg and ".seed: unknown key" in msg and "seeds" in msg


def test_wrong_type_names_key(tmp_path):
    msg = _error(tmp_path, {**BASE, "train": {"epochs": "ten"}})
    assert "suite.yaml: train.epochs: expected int, got 'ten'" in msg


def test_unknown_method_names_key_and_lists_available(tmp_path):
    msg = _error(tmp_path, {**BASE, "methods": ["linear", "gemm"]})
    assert "methods[1].name: unknown method 'gemm'" in msg and "linear" in msg


def test_bad_method_setting(tmp_path):
    msg = _error(tmp_path, {**BASE, "methods": [{"name": "gem", "settings": {"rnak": 2}}]})
    assert "methods[0].settings" in msg and "rnak" in msg


def test_cli_fails_in_one_line_before_any_trial(tmp_path, capsys):
    path = _write(tmp_path, {**BASE, "methods": ["nope"]})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "methods[0].name" in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()


def test_dry_run_lists_trials(tmp_path, capsys):
    assert main(["run", str(_write(tmp_path, BASE)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "gem/synthetic-target/full/s1" in out


@pytest.mark.parametrize("resources, key", [({"checkpoint_every": 0}, "resources.checkpoint_every"),
                                            ({"max_failures": -1}, "resources.max_failures")])
def test_checkpoint_and_retry_settings_are_checked(resources, key):
    with pytest.raises(PeftbenchError, match=key):
        parse_suite(micro_suite("checked", resources=resources), "s.yaml")
    defaults = parse_suite(micro_suite("checked"), "s.yaml").resources
    assert defaults.checkpoint_every is None and defaults.max_failures == 2
