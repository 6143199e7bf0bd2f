#!/usr/bin/env python
"""Numerical identity of our PTv3 with the reference (``facebookresearch/sonata`` ``sonata/model.py``).

The reference is read at run time from a git-ignored checkout (default ``.reference/sonata``,
the repository root); nothing of it is committed. What it imports and may be missing is answered
by small stand-ins (``reference_shims.py``); on CPU its convs add their bias after spconv's.

For each config it builds the reference PTv3 with random weights (every tensor perturbed, so no
bias is 0 and no LayerNorm is the identity), loads the reference's state dict into ours
*strictly* through a Sonata-format file, feeds both the same scenes and compares every encoder
level (forward hooks on ``enc.encS``) and the decoder output:

* ``fallback``: ``enable_flash=False`` in both, order shuffling off in both (the reference's
  GridPooling shuffles even when the PTv3 has ``shuffle_orders=False``; we switch it off on the
  reference's modules), train and eval mode, drop-path 0. Pass: max |ours - ref| <= tol * max |ref|
  per level (tol 1e-4).
* ``shuffle``: as ``fallback`` with ``shuffle_orders=True``: the reference draws the permutations
  from the global CPU RNG (seeded), ours from an explicit generator with the same seed.
* ``flash`` (``--flash``): the reference's flash path (fp16 cast) against ours (fp32, flash
  padding); reported with its error, not held to 1e-4.

``--grad`` also compares parameter gradients in train mode: reported in fp32 (max pooling's
argmax flips on near-ties under fp32 noise, ~1e-3 on a few tensors at full size), held to 1e-10
with ``--dtype float64`` (CPU). ``--fixture PATH`` writes the
committed CPU fixture (small config, weights, input, the reference's outputs) checked by
``tests/test_reference_fixture.py``. ``--sonata-checkpoint PATH`` writes the reference's random
full-size Sonata backbone in Sonata's release format (for a GPU trial).

    python scripts/reference_identity.py --configs tiny sonata --device cuda --flash --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peftbench.backbone import PointTransformerV3, backbone_config  # noqa: E402
from peftbench.backbone.checkpoint import (  # noqa: E402
    load_backbone_state, read_backbone_checkpoint, save_sonata_checkpoint)
from peftbench.backbone.compiled import compile_blocks  # noqa: E402
from peftbench.backbone.sparse_conv import set_default_backend  # noqa: E402
from scripts.reference_scenes import make_batch  # noqa: E402
from scripts.reference_shims import import_reference, patch_spconv_bias_for_cpu  # noqa: E402

TOL = 1e-4
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# The committed fixture's config: Sonata's structure (5 stages, 4 orders, 9 input channels,
# head dim 16, decoder) at a width that keeps the file well under 2 MB.
FIXTURE_CONFIG: dict[str, Any] = backbone_config(
    "tiny-dec",
    enc_depths=(1, 1, 1, 2, 1), enc_channels=(16, 16, 32, 32, 32), enc_num_head=(1, 1, 2, 2, 2),
    enc_patch_size=(64, 64, 64, 64, 64),
    dec_depths=(1, 1, 1, 1), dec_channels=(16, 16, 16, 32), dec_num_head=(1, 1, 1, 2),
    dec_patch_size=(64, 64, 64, 64),
)

CONFIGS: dict[str, dict[str, Any]] = {
    "fixture": FIXTURE_CONFIG,
    "tiny": backbone_config("tiny"),
    "tiny-dec": backbone_config("tiny-dec"),
    "sonata": backbone_config("sonata"),
    "sonata-dec": backbone_config("sonata-dec"),
}

# ------------------------------------------------------------------------------------ models


def build_reference(ref_model: types.ModuleType, config: dict[str, Any], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ref_model.PointTransformerV3(**config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Random biases, LayerNorm affine and mask token: no tensor may hide behind 0 or 1.
            if p.dim() == 1 or name.endswith("mask_token"):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def set_reference_shuffle(model: torch.nn.Module, ref_model: types.ModuleType, shuffle: bool) -> None:
    model.shuffle_orders = shuffle
    for m in model.modules():
        if isinstance(m, ref_model.GridPooling):
            m.shuffle_orders = shuffle  # the reference's GridPooling ignores the PTv3 setting


def level_hooks(model: torch.nn.Module, store: dict[str, Any]) -> list[Any]:
    handles = []
    for name, stage in model.enc.named_children():
        def hook(_module, _inputs, output, name=name):
            store[name] = {"feat": output.feat.detach().clone(), "grid_coord": output.grid_coord.detach().clone(),
                           "offset": output.offset.detach().clone()}
        handles.append(stage.register_forward_hook(hook))
    return handles


def run_model(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, train: bool,
              ours: bool, seed: int | None, grad: bool = False) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Forward once; ``{level name: {feat, grid_coord}, "out": final feat}`` (+ the loss if grad)."""
    model.train(train)
    dtype = next(model.parameters()).dtype
    data = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
    store: dict[str, Any] = {}
    handles = level_hooks(model, store)
    generator = None
    if seed is not None:
        if ours:
            generator = torch.Generator().manual_seed(seed)
        else:
            torch.manual_seed(seed)
    try:
        with torch.set_grad_enabled(grad):
            point = model(data, generator) if ours else model(data)
            loss = None
            if grad:
                w = torch.Generator().manual_seed(123)
                loss = (point.feat * torch.randn(point.feat.shape, generator=w).to(device)).sum()
                loss.backward()
    finally:
        for h in handles:
            h.remove()
    store["out"] = {"feat": point.feat.detach().clone()}
    return store, loss


def compare(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, r in ref.items():
        o = ours[name]
        entry: dict[str, Any] = {"points": int(r["feat"].shape[0])}
        if "grid_coord" in r:
            same = o["grid_coord"].shape == r["grid_coord"].shape and bool(torch.equal(
                o["grid_coord"].long().cpu(), r["grid_coord"].long().cpu()))
            entry["same_points"] = same
        if o["feat"].shape != r["feat"].shape:
            entry.update(shape=f"{tuple(o['feat'].shape)} vs {tuple(r['feat'].shape)}", rel=math.inf, ok=False)
        else:
            a, b = o["feat"].double().cpu(), r["feat"].double().cpu()
            diff = (a - b).abs()
            scale = float(b.abs().max()) or 1.0
            entry.update(max_abs=float(diff.max()), max_ref=scale, rel=float(diff.max()) / scale,
                         rel_l2=float(torch.linalg.norm(a - b) / max(float(torch.linalg.norm(b)), 1e-30)))
        result[name] = entry
    return result


def compare_grads(ours: torch.nn.Module, ref: torch.nn.Module) -> dict[str, Any]:
    """Per parameter, max |g_ours - g_ref| / max |g_ref|: the worst five and the overall max."""
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    rows, mismatch = [], []
    for n, p in ours.named_parameters():
        g = ref_grads.get(n)
        if g is None or p.grad is None:
            if (g is None) != (p.grad is None):
                mismatch.append(n)
            continue
        scale = float(g.abs().max()) or 1.0
        rows.append((float((p.grad.double() - g.double()).abs().max()) / scale, n))
    rows.sort(reverse=True)
    return {"max_rel": rows[0][0] if rows else 0.0, "worst": [f"{n} {r:.1e}" for r, n in rows[:5]],
            "grad_presence_mismatch": mismatch[:5], "tensors": len(ref_grads)}


def build_ours(config: dict[str, Any], ref_state: dict[str, torch.Tensor], tmp: Path, name: str
               ) -> tuple[PointTransformerV3, str]:
    """Our PTv3, loaded strictly from a Sonata-format file holding the reference's state dict."""
    path = tmp / f"{name}.pth"
    save_sonata_checkpoint(path, config, ref_state)
    ckpt = read_backbone_checkpoint(path)
    model = PointTransformerV3(**config)
    report = load_backbone_state(model, ckpt.state, strict=True, source=str(path), fmt=ckpt.format)
    return model, f"{ckpt.format}, {report.loaded} tensors"


def check_config(name: str, config: dict[str, Any], ref_model: types.ModuleType, batch: dict[str, torch.Tensor],
                 device: torch.device, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    base = dict(config, drop_path=0.0)
    out: dict[str, Any] = {"config": name, "scene_points": torch.diff(batch["offset"], prepend=torch.zeros(1,
                           dtype=torch.long)).tolist(), "cases": {}}
    cases = [("fallback", dict(enable_flash=False, shuffle_orders=False), None, ("eval", "train")),
             ("shuffle", dict(enable_flash=False, shuffle_orders=True), 7, ("eval", "train"))]
    if args.flash:
        cases.append(("flash", dict(enable_flash=True, shuffle_orders=False), None, ("eval",)))
    ref_state = None
    for case, overrides, seed, modes in cases:
        cfg = dict(base, **overrides)
        ref = build_reference(ref_model, cfg, args.seed)
        set_reference_shuffle(ref, ref_model, cfg["shuffle_orders"])
        if ref_state is None:
            ref_state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
            n_params = sum(p.numel() for p in ref.parameters())
            out["params"], out["tensors"] = n_params, len(ref_state)
        ref.to(device, DTYPES[args.dtype])
        for backend in args.backends:
            set_default_backend(backend)
            ours, how = build_ours(cfg, ref_state, tmp, f"{name}-{case}")
            ours.to(device, DTYPES[args.dtype])
            if args.compile:
                compile_blocks(ours)
            for mode in modes:
                train = mode == "train"
                grad = args.grad and train and case == "fallback"
                if grad:
                    ref.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                r, _ = run_model(ref, batch, device, train, False, seed, grad)
                _sync(device)
                t1 = time.perf_counter()
                o, _ = run_model(ours, batch, device, train, True, seed, grad)
                _sync(device)
                t2 = time.perf_counter()
                levels = compare(o, r)
                key = f"{case}/{backend}{'+compiled' if args.compile else ''}/{mode}"
                worst = max(v["rel"] for v in levels.values())
                tol = args.flash_tol if case == "flash" else (TOL if args.dtype == "float32" else 1e-10)
                res = {"levels": levels, "max_rel": worst, "tol": tol, "ok": worst <= tol and all(
                    v.get("same_points", True) for v in levels.values()), "loaded": how,
                       "ref_ms": 1000 * (t1 - t0), "ours_ms": 1000 * (t2 - t1)}
                if grad:
                    # fp32 gradients are reported, not held to a tolerance: max pooling's argmax flips
                    # on near-ties under 1e-7 forward noise (the same check in fp64 agrees to ~1e-14).
                    res["grads"] = compare_grads(ours, ref)
                    if args.dtype == "float64":
                        res["ok"] = res["ok"] and res["grads"]["max_rel"] <= args.grad_tol
                        res["ok"] = res["ok"] and not res["grads"]["grad_presence_mismatch"]
                out["cases"][key] = res
                print(f"{name:<11} {key:<24} max rel {worst:.2e} (tol {tol:.0e}) "
                      + ("OK " if res["ok"] else "FAIL ")
                      + " ".join(f"{k}:{v['points']}/{v['rel']:.1e}" for k, v in levels.items())
                      + (f"  grads max rel {res['grads']['max_rel']:.1e} ({res['grads']['worst'][0]})" if grad else "")
                      + f"  ref {res['ref_ms']:.0f} ms ours {res['ours_ms']:.0f} ms", flush=True)
            del ours
        del ref
        if device.type == "cuda":
            torch.cuda.empty_cache()
    set_default_backend("auto")
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------- fixture


def write_fixture(path: Path, ref_model: types.ModuleType, device: torch.device, seed: int) -> dict[str, Any]:
    """Weights (the reference's), an input of 2 small scenes and the reference's outputs.

    Cases (all fp32, drop-path 0; eval-mode outputs, and train-mode ones for ``fallback``):
    * ``fallback``: enable_flash=False with patch 64: deep levels shrink the patch to the smallest
      scene (the reference's fallback rule), shuffling off;
    * ``small-patch``: patches no larger than the smallest scene of each level, so the flash
      path's padding equals the fallback's (our enable_flash=True must match it too);
    * ``shuffle``: shuffle_orders=True, permutations from a seed (global RNG in the reference).
    """
    batch = make_batch([480, 320], 0.05, seed)
    base = dict(FIXTURE_CONFIG, drop_path=0.0)
    ref = build_reference(ref_model, dict(base, enable_flash=False), seed)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    fixture: dict[str, Any] = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in base.items()},
                               "state_dict": state, "input": batch, "cases": {}}
    # level sizes, to pick the small patch
    set_reference_shuffle(ref, ref_model, False)
    probe, _ = run_model(ref.to(device), batch, device, False, False, None)
    small = [int(torch.diff(probe[f"enc{s}"]["offset"].cpu(), prepend=torch.zeros(1, dtype=torch.long)).min())
             for s in range(len(base["enc_depths"]))]
    small_patch = tuple(min(16, n) for n in small)
    cases = {"fallback": (dict(enable_flash=False, shuffle_orders=False), None, ("eval", "train")),
             "small-patch": (dict(enable_flash=False, shuffle_orders=False, enc_patch_size=small_patch,
                                  dec_patch_size=small_patch[:4]), None, ("eval",)),
             "shuffle": (dict(enable_flash=False, shuffle_orders=True), 11, ("eval",))}
    for case, (overrides, shuffle_seed, modes) in cases.items():
        cfg = dict(base, **overrides)
        model = ref_model.PointTransformerV3(**cfg)
        model.load_state_dict(state)
        set_reference_shuffle(model, ref_model, cfg["shuffle_orders"])
        model.to(device)
        outputs = {}
        for mode in modes:
            r, _ = run_model(model, batch, device, mode == "train", False, shuffle_seed)
            outputs[mode] = {k: v["feat"].cpu() for k, v in r.items()}
        outputs["level_points"] = {k: int(v["feat"].shape[0]) for k, v in r.items()}
        fixture["cases"][case] = {"overrides": {k: (list(v) if isinstance(v, tuple) else v)
                                                for k, v in overrides.items()},
                                  "shuffle_seed": shuffle_seed, "outputs": outputs}
    fixture["meta"] = {"device": _device_name(device), "torch": str(torch.__version__),
                       "reference": "facebookresearch/sonata sonata/model.py @ " + _ref_commit(),
                       "made_by": "scripts/reference_identity.py --fixture", "tol": TOL,
                       "level_scene_min": small}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): level min scene sizes {small}, "
          f"small patch {small_patch}", flush=True)
    return fixture["meta"]


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def _ref_commit() -> str:
    """The reference's commit, from ``<reference>/COMMIT`` (written when it was fetched)."""
    path = Path(_REFERENCE_ROOT[0]) / "COMMIT"
    return path.read_text().strip() if path.is_file() else "unknown"


_REFERENCE_ROOT = [str(ROOT / ".reference" / "sonata")]


# --------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=str(ROOT / ".reference" / "sonata"),
                        help="checkout of facebookresearch/sonata (repository root)")
    parser.add_argument("--configs", nargs="*", default=["tiny"], choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", default=None, help="our sparse-conv backends to check")
    parser.add_argument("--points", nargs="+", type=int, default=None,
                        help="voxels per scene (default: 3000 2000 for small configs, 45000 30000 for sonata)")
    parser.add_argument("--flash", action="store_true", help="also compare the flash paths (reported only)")
    parser.add_argument("--flash-tol", type=float, default=2e-2)
    parser.add_argument("--compile", action="store_true", help="our blocks under torch.compile (train.compile)")
    parser.add_argument("--grad", action="store_true", help="compare parameter gradients in train mode")
    parser.add_argument("--grad-tol", type=float, default=1e-10, help="gradient tolerance (float64 only)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="float64: both models in double (spconv's CPU build supports it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixture", help="write the committed CPU fixture here")
    parser.add_argument("--sonata-checkpoint", help="write a random full Sonata backbone (Sonata format) here")
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args()

    device = torch.device(args.device)
    _REFERENCE_ROOT[0] = args.reference
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.backends is None:
        # auto: spconv with the small levels gathered (sparse_conv.GATHER_MAX_SITES)
        args.backends = ["auto", "spconv", "torch"] if device.type == "cuda" else ["torch"]
    ref_model = import_reference(Path(args.reference))
    if device.type == "cpu":
        torch.set_num_threads(1)  # spconv's CPU kernels race on more threads (sparse_conv.py)
        patch_spconv_bias_for_cpu(ref_model)
        from peftbench.backbone.spconv_conv import import_spconv
        import_spconv()  # stream patch, for backward on CPU torch

    import importlib.util
    env = {"device": _device_name(device), "torch": str(torch.__version__), "python": platform.python_version(),
           "reference": _ref_commit(), "stand_ins": {}}
    for mod in ("torch_scatter", "flash_attn", "timm", "addict", "huggingface_hub", "spconv"):
        spec = importlib.util.find_spec(mod)
        env["stand_ins"][mod] = "missing" if spec is None else (
            "stand-in" if spec.origin and "/shim/" in spec.origin else "real")
    print(json.dumps(env), flush=True)
    results: dict[str, Any] = {"env": env, "tol": TOL, "configs": {}}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            small = not name.startswith("sonata")
            sizes = args.points or ([3000, 2000] if small else [45000, 30000])
            batch = make_batch(sizes, 0.05 if small else 0.02, args.seed)
            res = check_config(name, CONFIGS[name], ref_model, batch, device, args, Path(tmp))
            results["configs"][name] = res
            ok &= all(c["ok"] for k, c in res["cases"].items() if not k.startswith("flash"))
    if args.sonata_checkpoint:
        cfg = backbone_config("sonata")
        ref = build_reference(ref_model, cfg, args.seed)
        path = Path(args.sonata_checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        torch.save({"config": plain, "state_dict": ref.state_dict()}, path)  # as the reference's release files
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB, {sum(p.numel() for p in ref.parameters())} params)")
    if args.fixture:
        results["fixture"] = write_fixture(Path(args.fixture), ref_model, device, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print("IDENTITY", "PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
