#!/usr/bin/env python
"""Time the reference PTv3 (``facebookresearch/sonata`` ``sonata/model.py``) on ``peftbench bench``'s
workloads, so both run side by side in one process on one machine.

The reference is read at run time from a git-ignored checkout (as ``scripts/reference_identity.py``
does; its stand-ins for torch_scatter, timm, addict and huggingface_hub are reused). Same scenes
(``peftbench.bench.synthetic_scenes``), same head (a Linear on the hypercolumn), loss, optimizer
and timing (``peftbench.bench.step_functions`` / ``timed``). Workloads: ``infer``; ``full``
(every parameter trains); ``frozen`` (no parameter of the backbone trains, the gradient flows
through every block to the input).

flash-attn does not install on the GPU machine, so unless a real ``flash_attn`` is importable, the
reference's flash branch (``enable_flash=True``, as Sonata ships) is answered by a stand-in: SDPA
in the dtype the reference hands it (fp16), every full patch in one call, the short ones one by
one, the sequence bounds read from the host once per level (the reference caches ``cu_seqlens``
per level) -- what flash-attn's varlen kernel computes, without its single fused launch.

    python scripts/reference_bench.py --reference .reference/sonata --backbone sonata --points 102400 \\
        --batch-sizes 1 3 --dtypes fp16 --json ref.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "scripts"))

from peftbench.backbone import backbone_config, hypercolumn  # noqa: E402
from peftbench.bench import autocast_for, step_functions, synthetic_scenes, timed  # noqa: E402
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.train.trainer import model_inputs, to_device  # noqa: E402

FLASH_STAND_IN = '''"""Stand-in for flash_attn (peftbench reference bench): varlen packed attention with SDPA in the
input dtype, all full sequences in one call; bounds read from the host once per cu_seqlens tensor."""
import weakref

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__version__ = "bench stand-in"
_FLASH = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]  # FA2, as flash-attn
_bounds = {}


def _host_bounds(cu_seqlens):
    key = id(cu_seqlens)
    if key not in _bounds:
        _bounds[key] = cu_seqlens.tolist()
        weakref.finalize(cu_seqlens, _bounds.pop, key, None)
    return _bounds[key]


def _attend(qkv, dropout_p, scale):
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (S, H, L, d)
    with sdpa_kernel(_FLASH):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale).transpose(1, 2)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None,
                                     causal=False, **kwargs):
    assert not causal
    bounds = _host_bounds(cu_seqlens)
    starts, lengths = bounds[:-1], [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    if all(n == max_seqlen for n in lengths):
        return _attend(qkv.view(-1, max_seqlen, *qkv.shape[1:]), dropout_p, softmax_scale).flatten(0, 1)
    out = torch.empty_like(qkv[:, 0])
    full = [s for s, n in zip(starts, lengths) if n == max_seqlen]
    if full:
        idx = (torch.tensor(full, device=qkv.device).view(-1, 1) + torch.arange(max_seqlen, device=qkv.device))
        out[idx.flatten()] = _attend(qkv[idx], dropout_p, softmax_scale).flatten(0, 1)
    for s, n in zip(starts, lengths):
        if n != max_seqlen and n > 0:
            out[s:s + n] = _attend(qkv[s:s + n].unsqueeze(0), dropout_p, softmax_scale)[0]
    return out
'''


def install_flash_stand_in(folder: Path) -> None:
    """Put the bench stand-in on ``sys.path`` ahead of the identity check's (fp32) one."""
    path = folder / "flash_attn" / "__init__.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FLASH_STAND_IN)
    sys.path.append(str(folder))  # after site-packages: a real flash_attn wins


def load_reference(checkout: Path, device: torch.device):
    """The reference's ``sonata.model`` from a checkout, with the bench's flash-attn stand-in."""
    from reference_shims import import_reference, patch_spconv_bias_for_cpu

    install_flash_stand_in(checkout.resolve().parent / "shim-bench")
    ref_model = import_reference(checkout)
    if device.type == "cpu":  # CPU spconv: bias outside the conv, stream getter patched for backward
        from peftbench.backbone.spconv_conv import import_spconv

        import_spconv()
        patch_spconv_bias_for_cpu(ref_model)
    return ref_model


def reference_model(ref_model, backbone: str, workload: str, device: torch.device):
    """``(backbone, head, forward)``: the reference PTv3 with a Linear head on its hypercolumn; every
    parameter trains for ``full``, none of the backbone's otherwise."""
    torch.manual_seed(0)
    model = ref_model.PointTransformerV3(**backbone_config(backbone)).to(device)
    head = torch.nn.Linear(sum(backbone_config(backbone)["enc_channels"]), 20).to(device)
    for p in model.parameters():
        p.requires_grad_(workload == "full")

    def forward(data: dict) -> torch.Tensor:
        return head(hypercolumn(model(dict(data))).feat)

    return model, head, forward


def bench_reference(ref_model, backbone: str, workload: str, batches: dict[int, dict], device: torch.device,
                    steps: int, dtypes: list[str]) -> list[dict]:
    model, head, forward = reference_model(ref_model, backbone, workload, device)
    rows = []
    for batch_size, batch in batches.items():
        inputs = model_inputs(to_device(batch, device))
        target = batch["segment"].to(device).clamp(min=0)
        for dtype in dtypes:
            infer, train = step_functions(model, list(head.parameters()), forward, inputs, target,
                                          lambda: autocast_for(device, dtype), grad_to_input=workload == "frozen",
                                          fused_optimizer=False)
            row = {"impl": "reference", "method": workload, "batch_size": batch_size, "dtype": dtype,
                   "points": len(target)}
            if workload == "infer":
                model.eval()
                row.update({f"infer_{k}": v for k, v in timed(infer, device, steps).items()})
            else:
                model.train()
                row.update({f"train_{k}": v for k, v in timed(train, device, steps).items()})
            rows.append(row)
            del infer, train
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", default=str(ROOT / ".reference" / "sonata"))
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--points", type=int, default=102400)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--dtypes", nargs="+", default=["fp16"])
    parser.add_argument("--workloads", nargs="+", default=["infer", "frozen", "full"])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--device")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ref_model = load_reference(Path(args.reference), device)
    scenes = synthetic_scenes(args.points, max(args.batch_sizes))
    batches = {b: collate_points(scenes[:b]) for b in args.batch_sizes}
    rows = []
    for workload in args.workloads:
        start = time.perf_counter()
        rows += bench_reference(ref_model, args.backbone, workload, batches, device, args.steps, args.dtypes)
        print(f"reference {workload}: {time.perf_counter() - start:.0f} s", flush=True)
        for r in rows[-len(batches) * len(args.dtypes):]:
            print("  ", {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    if args.json:
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        flash = "stand-in" if getattr(ref_model.flash_attn, "__version__", "") == "bench stand-in" else "flash_attn"
        Path(args.json).write_text(json.dumps({"device": str(device), "gpu": gpu, "flash_attn": flash,
                                               "args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
