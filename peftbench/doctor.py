"""``peftbench doctor``: what a bug report needs -- versions, GPUs, which sparse-conv and attention
backends a trial will use and why, where runs are tracked and where checkpoints are cached.

Every probe is guarded: a broken package is reported, never a reason for the command to fail.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("peftbench", "torch", "numpy", "ray", "mlflow", "huggingface_hub", "tqdm", "pyyaml", "triton")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _spconv_distributions() -> list[str]:
    """spconv ships as one distribution per CUDA line (spconv, spconv-cu120, spconv-cu126, ...)."""
    found = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()
             if (d.metadata["Name"] or "").lower().startswith("spconv")}
    return [f"{name} {version}" for name, version in sorted(found.items())]


def _spconv_import_error() -> str | None:
    try:
        import spconv.pytorch  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure means the torch backend is used
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return None


def versions() -> list[tuple[str, str]]:
    import peftbench

    rows = [("peftbench", f"{peftbench.__version__} ({Path(peftbench.__file__).resolve().parent})"),
            ("python", f"{platform.python_version()} ({sys.executable})"),
            ("platform", platform.platform())]
    rows += [(name, _version(name)) for name in PACKAGES[1:]]
    rows.append(("spconv", ", ".join(_spconv_distributions()) or "not installed"))
    return rows


def devices() -> list[tuple[str, str]]:
    import torch

    cuda = torch.version.cuda
    rows = [("torch build", f"CUDA {cuda}" if cuda else "CPU only"),
            ("cuDNN", str(torch.backends.cudnn.version()) if cuda else "-"),
            ("CPU threads", f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not torch.cuda.is_available():
        rows.append(("GPUs", "none visible" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")))
        return rows
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        rows.append((f"GPU {i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                                 f"compute {props.major}.{props.minor}"))
    if visible is not None:
        rows.append(("CUDA_VISIBLE_DEVICES", visible))
    return rows


def backends() -> list[tuple[str, str]]:
    """The choices a trial makes with the suites' default ``conv_backend: auto``."""
    import torch

    from peftbench.backbone.gather_conv import kernels_available
    from peftbench.backbone.sparse_conv import GATHER_MAX_SITES, resolve_backend

    on_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if on_cuda else "cpu")
    chosen = resolve_backend("auto", device)
    spconv_error = _spconv_import_error()
    if on_cuda:
        kernels = ("under fp16/bf16 autocast every level takes the gathered conv's Triton kernels (faster than spconv); "
                   if kernels_available() else "Triton does not import, so no level takes the gathered conv's kernels; ")
        why = kernels + (f"otherwise spconv, with levels of at most {GATHER_MAX_SITES:,} sites gathered (spconv's host "
                         "time per call outweighs their work)" if chosen == "spconv" else
                         f"otherwise the torch conv: spconv does not import ({spconv_error}); install the spconv-cuXXX "
                         "matching torch's CUDA (pip install 'peftbench[cu126]') for faster float32 convs")
    else:
        state = "imports" if spconv_error is None else f"does not import ({spconv_error})"
        why = (f"no GPU: auto picks spconv on CUDA only (its CPU kernels run under a one-thread guard); "
               f"spconv {state}")
    rows = [("device", f"{device} (a trial uses CUDA whenever torch sees a GPU)"),
            ("sparse conv", f"{chosen}: {why}")]
    rows.append(("attention", _attention_choice(on_cuda)))
    rows.append(("layer norm", _layer_norm_choice(on_cuda)))
    rows.append(("GEM context adapter", _latent_attention_choice(on_cuda)))
    return rows


def _latent_attention_choice(on_cuda: bool) -> str:
    from peftbench.backbone import latent_attention
    from peftbench.backbone.triton_support import triton_kernels

    if not on_cuda:
        return "torch's core (its Triton kernels run on CUDA only)"
    if not latent_attention.TRITON_LATENT or triton_kernels("triton_latent_attention") is None:
        return "torch's core: Triton does not import (CUDA builds of torch bring it)"
    return (f"Triton kernels up to {latent_attention.KERNEL_MAX_LATENTS} latents a scene, torch's core above")


def _layer_norm_choice(on_cuda: bool) -> str:
    from peftbench.backbone import layer_norm

    if not on_cuda:
        return "torch's (the Triton kernels for narrow rows run on CUDA only)"
    if layer_norm.triton_function() is None:
        return "torch's: Triton does not import (CUDA builds of torch bring it)"
    return (f"Triton kernels for rows of at most {layer_norm.TRITON_MAX_CHANNELS} channels (torch's spends one "
            "thread block per row), torch's above")


def _attention_choice(on_cuda: bool) -> str:
    import torch

    base = "torch scaled_dot_product_attention per serialized patch (flash-attn package not used)"
    if not on_cuda:
        return f"{base}; CPU: fused flash kernel in fp32 ({torch.backends.cpu.get_cpu_capability()})"
    major, _ = torch.cuda.get_device_capability(0)
    flash = torch.backends.cuda.flash_sdp_enabled() and major >= 8
    return (f"{base}; CUDA: {'flash kernel' if flash else 'memory-efficient kernel'} under AMP (fp16), "
            "memory-efficient or math kernel in fp32" + ("" if flash else " (flash needs compute >= 8.0)"))


def storage() -> list[tuple[str, str]]:
    from peftbench.hub import HubFile, hub_cache_dir, hub_offline

    rows = []
    try:
        from peftbench import tracking

        uri = tracking.resolve_tracking_uri(None)
        rows.append(("tracking URI", f"{uri} (default of `peftbench run`; --tracking-uri overrides)"))
    except Exception as err:  # noqa: BLE001
        rows.append(("tracking URI", f"unavailable: {err}"))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        rows.append(("MLFLOW_TRACKING_URI", f"{os.environ['MLFLOW_TRACKING_URI']} (pass it as --tracking-uri)"))
    cache = hub_cache_dir()
    sonata = HubFile("facebook/sonata", "sonata.pth")
    rows.append(("HF cache", f"{cache}{' (HF_HUB_OFFLINE: cache only)' if hub_offline() else ''}"))
    rows.append(("facebook/sonata", "cached" if _cached(sonata, cache) else
                 "not cached (downloaded on first use of `backbone.checkpoint: facebook/sonata`)"))
    return rows


def _cached(ref, cache: Path) -> bool:
    try:
        import huggingface_hub
    except ImportError:
        return False
    found = huggingface_hub.try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=cache)
    return isinstance(found, str)


def doctor_report() -> str:
    sections = [("versions", versions), ("devices", devices), ("backends", backends), ("storage", storage)]
    lines = []
    for title, probe in sections:
        lines.append(f"{title}:")
        try:
            rows = probe()
        except Exception as err:  # noqa: BLE001 - report it, keep going
            rows = [("error", f"{type(err).__name__}: {err}")]
        width = max(len(key) for key, _ in rows)
        lines += [f"  {key:<{width}}  {value}" for key, value in rows]
    return "\n".join(lines)
