"""``peftbench bench --report DIR``: the rows as JSON, markdown tables and a figure.

Tables: the three workloads the issue tracks against the reference (same run, same machine):
inference, frozen backbone with gradient flow, full fine-tuning; every method against our own
``frozen`` row; and the per-stage breakdowns where the profiler ran. The figure shows ms per
workload, ours beside the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (label, our method, our mode, reference workload): the reference's "infer" is the plain forward,
# which for us is any method with nothing attached; ``frozen``'s inference is that forward.
WORKLOADS = (("inference", "frozen", "infer", "infer"),
             ("train, frozen backbone + gradient flow", "frozen", "train", "frozen"),
             ("train, full fine-tuning", "full", "train", "full"))


def _index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {(r["method"], r["batch_size"], r["dtype"]): r for r in rows}


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def reference_table(ours: list[dict], reference: list[dict]) -> list[str]:
    mine, ref = _index(ours), _index(reference)
    lines = ["| workload | batch | dtype | reference ms / GiB | peftbench ms / GiB | ratio ms | ratio GiB |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(b, d) for _, b, d in ref})
    for label, method, mode, workload in WORKLOADS:
        for batch_size, dtype in keys:
            r, o = ref.get((workload, batch_size, dtype)), mine.get((method, batch_size, dtype))
            if r is None or o is None or f"{mode}_ms" not in o:
                continue
            rm, om = r[f"{mode}_ms"], o[f"{mode}_ms"]
            rg, og = r.get(f"{mode}_peak_gib"), o.get(f"{mode}_peak_gib")
            lines.append(f"| {label} | {batch_size} | {dtype} | {rm:.1f} / {_fmt(rg, '.2f')} | {om:.1f} / "
                         f"{_fmt(og, '.2f')} | **{om / rm:.2f}** | {_fmt(og / rg if rg and og else None, '.2f')} |")
    return lines


def _device_ms(row: dict | None, mode: str) -> float | None:
    """The profiled step's device time (sum of stages): unlike wall time, free of host jitter."""
    stages = (row or {}).get(f"{mode}_stages")
    return stages.get("total (sum of stages)") if stages else None


def _ratio(a: float | None, b: float | None) -> str:
    return _fmt(a / b if a and b else None, ".2f")


def method_table(ours: list[dict]) -> list[str]:
    base = _index(ours)
    profiled = any(_device_ms(r, "train") for r in ours)
    head = "| method | batch | dtype | trainable | infer ms | train ms | infer GiB | train GiB | infer / frozen | train / frozen |"
    if profiled:
        head += " device ms infer / train | device infer / frozen | device train / frozen |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in ours:
        f = base.get(("frozen", r["batch_size"], r["dtype"]))
        ri, rt = r.get("infer_ms"), r.get("train_ms")
        line = (f"| {r['method']} | {r['batch_size']} | {r['dtype']} | {r['trainable']:,} | {_fmt(ri)} | {_fmt(rt)} | "
                f"{_fmt(r.get('infer_peak_gib'), '.2f')} | {_fmt(r.get('train_peak_gib'), '.2f')} | "
                f"{_ratio(ri, (f or {}).get('infer_ms'))} | {_ratio(rt, (f or {}).get('train_ms'))} |")
        if profiled:
            di, dt = _device_ms(r, "infer"), _device_ms(r, "train")
            line += (f" {_fmt(di)} / {_fmt(dt)} | {_ratio(di, _device_ms(f, 'infer'))} | "
                     f"{_ratio(dt, _device_ms(f, 'train'))} |")
        lines.append(line)
    return lines


def stage_tables(ours: list[dict], limit: int = 8) -> list[str]:
    lines: list[str] = []
    for r in ours:
        for mode in ("infer", "train"):
            stages = r.get(f"{mode}_stages")
            if not stages:
                continue
            host = r.get(f"{mode}_host_stages") or {}
            total = stages.get("total (sum of stages)", 0.0)
            lines += ["", f"**{r['method']}, {mode}, batch {r['batch_size']}, {r['dtype']}** — step "
                      f"{r[f'{mode}_ms']:.1f} ms wall ({r.get(f'{mode}_host_ms', float('nan')):.1f} ms until the "
                      f"host returned), {total:.1f} ms in kernels ({100 * total / r[f'{mode}_ms']:.0f} % busy); "
                      f"host ms = the ops' own CPU time under the profiler", "",
                      "| stage | device ms | share | host ms |", "|---|---|---|---|"]
            for name in dict.fromkeys([*stages, *host]):
                ms = stages.get(name, 0.0)
                if name != "total (sum of stages)" and (ms >= 0.05 or host.get(name, 0) >= 0.5):
                    lines.append(f"| {name} | {ms:.1f} | {100 * ms / total:.0f} % | {_fmt(host.get(name))} |")
            lines.append(f"| total | {total:.1f} | 100 % | {_fmt(host.get('total (sum of stages)'))} |")
    return lines


def figure(ours: list[dict], reference: list[dict] | None, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ref = _index(reference or [])
    labels, ours_ms, ref_ms = [], [], []
    for r in ours:
        for mode in ("infer", "train"):
            if f"{mode}_ms" not in r or r["dtype"] != ours[0]["dtype"]:
                continue
            labels.append(f"{r['method']} {mode}\nbatch {r['batch_size']}")
            ours_ms.append(r[f"{mode}_ms"])
            workload = next((w for _, m, md, w in WORKLOADS if (m, md) == (r["method"], mode)), None)
            match = ref.get((workload, r["batch_size"], r["dtype"])) if workload else None
            ref_ms.append(match[f"{mode}_ms"] if match else float("nan"))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels)), 4.2))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], ref_ms, 0.4, label="reference (Sonata PTv3)", color="#999999")
    ax.bar([x + 0.2 for x in xs], ours_ms, 0.4, label="peftbench", color="#1f77b4")
    ax.set_xticks(list(xs), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"ms per step ({ours[0]['dtype']})")
    ax.legend()
    ax.set_title("peftbench bench: ms per workload, ours vs reference (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_bench_report(result: dict[str, Any], reference: dict[str, Any] | None, folder: Path) -> list[Path]:
    """Write ``bench.json`` (ours and the reference's rows), ``bench.md`` and ``bench.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    ours = result["rows"]
    ref_rows = reference["rows"] if reference else []
    points = ours[0]["points"] // ours[0]["batch_size"] if ours else 0
    md = ["# `peftbench bench`", "",
          f"GPU: {result.get('gpu') or result.get('device')}; torch {result.get('torch', '?')}; synthetic rooms "
          f"cropped to {points:,} points per scene; median of {result['args'].get('steps')} steps after 2 warm-ups; "
          "peak = CUDA allocator peak during the workload.", ""]
    if ref_rows:
        md += ["## Against the reference (same process, same scenes, same head, loss and optimizer)", "",
               f"Reference: facebookresearch/sonata `sonata/model.py`, flash attention: "
               f"{reference.get('flash_attn', '?')}. Ratio < 1: peftbench is faster / smaller.", ""]
        md += reference_table(ours, ref_rows) + [""]
    md += ["## Every method against our `frozen` row", "",
           "`frozen`: no method, backbone frozen, gradient flowing through every block to the input "
           "(the cost floor of any method that inserts modules into every block; paper Table 7's baseline).", ""]
    md += method_table(ours)
    stages = stage_tables(ours)
    if stages:
        md += ["", "## Where the time goes (torch profiler, one step; device time per stage)"] + stages
    paths = [folder / "bench.json", folder / "bench.md"]
    paths[0].write_text(json.dumps({"peftbench": result, "reference": reference}, indent=2, default=str))
    paths[1].write_text("\n".join(md) + "\n")
    png = figure(ours, ref_rows, folder / "bench.png")
    return paths + ([png] if png else [])
