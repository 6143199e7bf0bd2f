"""Built-in suites are found by name from any folder, a local file wins, and `peftbench suites`
lists each with its trial count and what it needs."""

from __future__ import annotations

import pytest
import yaml

from peftbench.builtin_suites import BUILTIN_SUITES_DIR, builtin_suites, locate_suite, required_variables
from peftbench.cli import main
from peftbench.errors import PeftbenchError
from peftbench.suite import load_suite


@pytest.fixture
def empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_name_finds_the_built_in_suite_from_an_empty_folder(empty_folder):
    assert locate_suite("demo") == BUILTIN_SUITES_DIR / "demo.yaml"
    assert locate_suite("suites/demo.yaml") == BUILTIN_SUITES_DIR / "demo.yaml"  # as the README writes it
    suite = load_suite("demo")
    assert suite.name == "demo"
    # data and caches stay relative to the working folder, not to the shipped file
    assert suite.datasets[0].root == "data/synthetic/target-40"


def test_a_file_in_the_working_folder_wins(empty_folder):
    own = yaml.safe_load((BUILTIN_SUITES_DIR / "demo.yaml").read_text()) | {"name": "mine"}
    (empty_folder / "demo.yaml").write_text(yaml.safe_dump(own))
    assert locate_suite("demo") == empty_folder.joinpath("demo.yaml").relative_to(empty_folder)
    assert load_suite("demo").name == "mine"


def test_an_unknown_suite_names_the_built_in_ones(empty_folder):
    with pytest.raises(PeftbenchError, match="suite file not found: nope.yaml .*built-in suites: .*demo"):
        locate_suite("nope.yaml")
    with pytest.raises(PeftbenchError):
        locate_suite("elsewhere/demo.yaml")  # a path that is not ours is never swapped for a built-in


def test_required_variables_skip_comments():
    paper = required_variables(BUILTIN_SUITES_DIR / "paper.yaml")
    assert paper[0] == "SONATA_CHECKPOINT" and {"SCANNET_ROOT", "S3DIS_ROOT", "SCANNETPP_ROOT"} <= set(paper)
    assert required_variables(BUILTIN_SUITES_DIR / "demo.yaml") == []


def test_suites_command_lists_trials_and_needs(empty_folder, capsys):
    assert main(["suites"]) == 0
    out = capsys.readouterr().out
    assert set(builtin_suites()) >= {"demo", "paper"}
    demo = next(line for line in out.splitlines() if line.strip().startswith("demo "))
    assert "16 trials" in demo and "CPU" in demo and "nothing to download" in demo
    paper = next(line for line in out.splitlines() if line.strip().startswith("paper "))
    assert "$SONATA_CHECKPOINT" in paper and "$SCANNET_ROOT" in paper and "GPU" in paper

    assert main(["suites", "demo"]) == 0
    assert capsys.readouterr().out == (BUILTIN_SUITES_DIR / "demo.yaml").read_text()
    assert main(["suites", "nope"]) == 2


def test_run_demo_dry_run_from_an_empty_folder(empty_folder, capsys):
    assert main(["run", "demo", "--dry-run"]) == 0
    assert "16 trials in suite 'demo'" in capsys.readouterr().out


def test_a_searched_suite_counts_search_and_final_trials(empty_folder):
    from peftbench.catalog import describe

    suite = {"name": "searched", "backbone": {"config": "tiny"}, "methods": ["linear"], "seeds": [0],
             "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt"}],
             "search": {"lr": [0.01, 0.05], "metric": "val/mIoU", "seeds": [0]}, "final": {"seeds": [0, 1]}}
    path = empty_folder / "searched.yaml"
    path.write_text(yaml.safe_dump(suite))
    info = describe(path)
    # 2 learning rates x 1 search seed for the one method; then the final seeds 0, 1
    assert (info.trials, info.search_trials, info.device) == (2, 2, "CPU")
