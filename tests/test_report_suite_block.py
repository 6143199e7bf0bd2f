"""The suite's `report:` block: validated with the suite, carried to each run as a tag, and never
part of the trial fingerprint (a new layout must not re-run finished trials)."""

from __future__ import annotations

import json

import pytest

from peftbench.errors import PeftbenchError
from peftbench.suite import parse_suite, trial_specs
from peftbench.tune import trial_tags

BASE = {"name": "abl", "datasets": [{"name": "synthetic", "domain": "target", "root": "data/x"}],
        "methods": ["linear", {"name": "gem", "label": "gem-m1", "settings": {"num_latents": 1}}, "gem"]}
BLOCK = {"baseline": "linear", "tables": [{"title": "Table 6b", "rows": ["gem-m1", "gem"],
                                           "names": {"gem-m1": "m = 1"}}]}


def test_block_travels_as_a_tag_outside_the_fingerprint() -> None:
    plain = trial_specs(parse_suite(BASE, "abl.yaml"))
    laid_out = trial_specs(parse_suite({**BASE, "report": BLOCK}, "abl.yaml"))
    assert [s["fingerprint"] for s in plain] == [s["fingerprint"] for s in laid_out]
    tag = json.loads(trial_tags(laid_out[0])["peftbench.report"])
    assert tag["tables"][0] == {"title": "Table 6b", "rows": ["gem-m1", "gem"], "names": {"gem-m1": "m = 1"}}
    assert tag["baseline"] == "linear"
    assert "peftbench.report" not in trial_tags(plain[0])


@pytest.mark.parametrize("block, key", [
    ({"tables": [{"title": "T", "rows": ["gem-m2"]}]}, r"report.tables\[0\].rows\[0\]: 'gem-m2'"),
    ({"baseline": "lin"}, "report.baseline: 'lin'"),
    ({"tables": [{"title": "T", "rows": ["gem"], "names": {"gme": "x"}}]}, "report.tables\\[0\\].names.gme"),
    ({"tables": [{"rows": ["gem"]}]}, r"report.tables\[0\].title: required"),  # schema's own wording
])
def test_bad_block_names_file_and_key(block: dict, key: str) -> None:
    with pytest.raises(PeftbenchError, match=f"abl.yaml[:.] ?{key}"):
        parse_suite({**BASE, "report": block}, "abl.yaml")


def test_ablation_suite_declares_the_papers_tables() -> None:
    from peftbench.suite import load_suite

    suite = load_suite("suites/ablation.yaml")
    titles = [t.title.split(":")[0] for t in suite.report.tables]
    assert titles == ["Table 6a", "Table 6b", "Table 6c", "Table 10", "Table 10", "Table 10"]
    assert suite.report.tables[1].names == {"gem-m1": "m = 1", "gem": "m = 4", "gem-m8": "m = 8"}
    labels = {m.label or m.name for m in suite.methods}
    assert {r for t in suite.report.tables for r in t.rows} == labels  # every ablation run has a table
