"""Report views from a synthetic MLflow store (run records only, no training): significance,
efficiency by hardware, data efficiency, cross-dataset, ablation tables, comparisons, MLflow run."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml
from scipy import stats

import report_store as store
from peftbench.cli import main
from peftbench.tracking import client, finished_fingerprints
from peftbench.train.metrics import scores_from_confusion


def section(md: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of any level."""
    start = md.index(heading + "\n")
    nxt = re.search(r"^#{1,6} ", md[start + len(heading):], flags=re.M)
    return md[start:start + len(heading) + (nxt.start() if nxt else len(md))]


def table(md: str, heading: str) -> dict[str, dict[str, str]]:
    """The first Markdown table under ``heading``: first column -> {header: cell}."""
    lines = [ln for ln in section(md, heading).splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    headers, rows = split[0], split[2:]
    out: dict[str, dict[str, str]] = {}
    for row in rows:  # repeated headers (each Δ column) keep their position
        out[row[0]] = {f"{h}#{i}" if headers.count(h) > 1 else h: c for i, (h, c) in enumerate(zip(headers, row))}
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("store")
    uri = store.build(root)
    before = finished_fingerprints(uri, "bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the one-experiment form, as before, logged to MLflow
        rc1 = main(["report", "bench", "--tracking-uri", uri, "--out", str(root / "single")])
    suite = root / "layout.yaml"  # --suite replaces the layout logged with the runs
    suite.write_text(yaml.safe_dump({"name": "layout", "methods": ["linear", "gem", "lora"], "datasets": [
        {"name": "synthetic", "root": "x"}], "report": {"tables": [{"title": "Override", "rows": ["gem", "lora"],
                                                                     "names": {"gem": "GEM"}}]}}))
    rc2 = main(["report", "bench", "bench-b", "--tracking-uri", uri, "--out", str(root / "cmp"), "--no-mlflow",
                "--suite", str(suite)])
    return {"uri": uri, "root": root, "md": (root / "single" / "summary.md").read_text(),
            "said": printed.getvalue().splitlines(), "cmp": (root / "cmp" / "summary.md").read_text(),
            "rc": (rc1, rc2), "before": before}


def test_significance_is_a_paired_t_interval(report: dict) -> None:
    md = report["md"]
    sig = table(md, "### Δ to `linear`: scannet, split `full`")
    assert sig["gem"]["Δ mIoU (points)"] == "+3.0 ± 1.2*"      # diffs 3.0, 3.5, 2.5; t(0.975, 2) = 4.30
    assert sig["gem"]["95 % CI"] == "[+1.8, +4.2]"
    assert sig["lora"]["Δ mIoU (points)"] == "+0.2 ± 2.6"      # includes 0: no marker
    assert sig["gem"]["paired seeds"] == "3"
    # The marker agrees with scipy's paired t-test at 0.05.
    assert stats.ttest_rel(store.FULL["gem"], store.FULL["linear"]).pvalue < 0.05
    assert stats.ttest_rel(store.FULL["lora"], store.FULL["linear"]).pvalue > 0.05
    assert "Student's t distribution with n − 1 degrees of freedom" in md
    claim = "gem beats linear beyond the seed spread on scannet (full): +3.0 points, 95 % CI [+1.8, +4.2]"
    assert claim in md and any(line.startswith(claim) for line in report["said"])
    assert "lora vs linear on scannet (full): +0.2 points, 95 % CI [-2.4, +2.8], paired t over 3 seeds; " \
           "not beyond the seed spread." in md
    one = table(md, "### Δ to `linear`: scannet200, split `full`")
    assert one["gem"]["Δ mIoU (points)"] == "+3.0 (single seed, no interval)"


def test_efficiency_ratios_never_mix_hardware(report: dict) -> None:
    md = report["md"]
    gpu = table(md, "### scannet — NVIDIA H200")
    cpu = table(md, "### scannet — CPU: AMD EPYC (2 threads)")
    # latency columns: header "latency (ms)" then its "Δ"
    assert (gpu["gem"]["latency (ms)"], gpu["gem"]["Δ#8"]) == ("57.5", "+15 %")
    assert (cpu["gem"]["latency (ms)"], cpu["gem"]["Δ#8"]) == ("600.0", "+20 %")
    assert gpu["linear"]["Δ#8"] == "baseline" and gpu["gem"]["Δ#12"] == "−20 %"  # points/s
    assert gpu["gem"]["peak memory (MB)"] == "7,100" and gpu["gem"]["runs"] == "2"
    # GPU-hours: 2 full runs × 1 h × 2 GPUs + 6 limited-split runs × 1 h × 1 GPU.
    assert gpu["linear"]["GPU-h (all runs)"] == "10.00"
    assert "GPU-h (all runs)" not in cpu["linear"]  # CPU runs hold no GPU
    assert "never one ratio across them" in section(md, "### scannet — NVIDIA H200")
    assert "### scannet200 — unknown hardware" in md  # runs without the tag are still shown


def test_data_efficiency_table(report: dict) -> None:
    md = report["md"]
    block = section(md, "### scannet — data efficiency")
    header = [ln for ln in block.splitlines() if ln.startswith("|")][0]
    assert header == "| method | scenes 1 % | scenes 10 % | full | points 20 | full |"
    rows = table(md, "### scannet — data efficiency")
    assert rows["gem"]["scenes 1 %"] == "**45.5 ± 0.7†**"      # seeded subset marked, best in bold
    assert rows["linear"]["scenes 10 %"] == "60.5 ± 0.7"       # official: no marker
    assert rows["prompt"]["points 20"] == "—"
    assert "Limited Reconstructions: scenes 1 %, scenes 10 %, full; Limited Annotations: points 20, full" in block
    assert "4 limited-split run(s) did not record" in block    # points-20 runs carry no split_source tag
    assert "![Test mIoU vs. training data" in md and (report["root"] / "single" / "data_efficiency.svg").is_file()


def test_cross_dataset_table(report: dict) -> None:
    rows = table(report["md"], "### Test mIoU across datasets")
    assert list(rows["linear"]) == ["method", "params", "trainable %", "scannet", "scannet200", "s3dis-area5",
                                    "s3dis-6fold", "mean"]
    six = 100 * scores_from_confusion(sum(store.FOLDS.values()))["mIoU"]  # summed confusions
    assert rows["gem"]["s3dis-6fold"] == f"**{six:.1f}**"
    assert rows["linear"]["mean"] == f"{(71.0 + 30.0 + six) / 3:.1f}"  # area 5 is a fold: not counted twice
    assert rows["prompt"]["scannet"] == "failed (1)" and rows["lora"]["scannet200"] == "—"
    assert rows["lora"]["mean"] == "—"
    assert (rows["gem"]["params"], rows["gem"]["trainable %"]) == ("1.8M", "1.7")


def test_ablation_tables_from_the_logged_report_block(report: dict) -> None:
    rows = table(report["md"], "### Table 6a: SA and CA — scannet")
    assert list(rows) == ["linear", "SA + CA", "sa-only"]        # declared order and names
    assert rows["SA + CA"]["method"] == "gem" and rows["SA + CA"]["mIoU"] == "**74.0 ± 0.9**"
    assert rows["SA + CA"]["Δ mIoU (95 % CI)"] == "+3.0 ± 1.2*"
    assert rows["sa-only"]["mIoU"] == "—" and rows["sa-only"]["seeds"] == "0"  # never ran: visible


def test_compare_suffixes_shared_methods(report: dict) -> None:
    assert report["rc"] == (0, 0)
    rows = table(report["cmp"], "### scannet — split `full`")
    assert rows["gem@bench"]["seeds"] == "3" and rows["gem@bench-b"]["seeds"] == "1"  # same fingerprints, both kept
    assert rows["gem@bench-b"]["mIoU"] == "72.0" and rows["sa"]["mIoU"] == "72.5"    # only in bench-b: no suffix
    assert "gem" not in rows and "linear" not in rows
    assert rows["sa"]["seeds"] == "1"                              # the two search runs are not seeds
    search = table(report["cmp"], "### Search: chosen settings")
    assert (search["sa"]["chosen setting"], search["sa"]["search runs"]) == ("lr = 0.002", "2 finished")
    h100 = table(report["cmp"], "### scannet — NVIDIA H100")
    assert h100["gem@bench-b"]["Δ#8"] == "+15 %"                  # against linear@bench-b, its own experiment
    assert h100["gem@bench-b"]["GPU-h (all runs)"] == "0.50"      # 1 h at cost/gpus = 0.5
    assert h100["sa"]["runs"] == "1" and h100["sa"]["GPU-h (all runs)"] == "0.50"  # search runs not counted
    assert "gem@bench-b vs linear@bench-b on scannet (full): +1.0 points on one seed" in report["cmp"]
    rows = table(report["cmp"], "### Override — scannet")  # the --suite layout, one row per experiment
    assert [(name, r["method"]) for name, r in rows.items()] == [
        ("GEM@bench", "gem@bench"), ("GEM@bench-b", "gem@bench-b"), ("lora", "lora")]
    assert rows["GEM@bench-b"]["mIoU"] == "72.0" and "Table 6a" not in report["cmp"]


def test_report_run_in_mlflow_is_ignored_by_resume_and_tables(report: dict) -> None:
    from peftbench.report import load_runs

    c = client(report["uri"])
    exp = c.get_experiment_by_name("bench")
    runs = c.search_runs([exp.experiment_id], "tags.`peftbench.kind` = 'report'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    paths = {a.path for a in c.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/summary.md", "report/index.html", "report/miou_vs_latency.png"} <= paths
    assert finished_fingerprints(report["uri"], "bench") == report["before"]
    assert len(load_runs(report["uri"], "bench")) == 28        # trial runs only


def test_every_figure_is_referenced(report: dict) -> None:
    out = report["root"] / "single"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"miou_vs_params.png", "miou_vs_latency.png", "miou_vs_memory.png", "data_efficiency.png",
            "curves.png", "per_class_iou.png", "cross_dataset.png", "significance.png"} <= set(pngs)
    html = (out / "index.html").read_text()
    for name in pngs:
        assert f"]({name})" in report["md"], name
        assert f'<img src="{name}"' in html, name
        assert (out / name).with_suffix(".svg").is_file()
    assert "<table>" in html and "<b>74.0 ± 0.9</b>" in html
    tex = (out / "summary.tex").read_text()
    assert r"\multicolumn{3}{c}{Limited Reconstructions}" in tex and r"\textbf{45.5 $\pm$ 0.7$^\dagger$}" in tex


def test_pure_helpers() -> None:
    from peftbench.hardware import is_gpu
    from peftbench.report.data_efficiency import split_amount
    from peftbench.report.efficiency import pareto_front, relative

    assert pareto_front([50, 52.8, 57.5, 60], [71.0, 71.2, 74.0, 73.0]) == [0, 1, 2]
    assert relative(57.5, 50.0) == "+15 %" and relative(40, 50) == "−20 %" and relative(1, 0) == "—"
    assert split_amount("scenes-0.5") == ("scenes", 0.5) and split_amount("full") is None
    assert is_gpu("NVIDIA H200") and not is_gpu("CPU: AMD EPYC (2 threads)") and not is_gpu(None)
