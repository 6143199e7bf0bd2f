"""What the reference (``facebookresearch/sonata`` ``sonata/model.py``) imports and may be missing, as small
stand-ins, and the reference's model module imported from a git-ignored checkout (``reference_identity.py``,
``reference_bench.py``).

The stand-ins are written to ``<checkout>/../shim/`` and put at the *end* of ``sys.path`` (a real package, when
installed, wins):

* ``torch_scatter.segment_csr`` over ``torch.segment_reduce`` (0 for empty segments);
* ``flash_attn.flash_attn_varlen_qkvpacked_func``: SDPA per ``cu_seqlens`` sequence, computed in
  fp32 from the fp16 ``qkv`` the reference hands it, returned in fp16 (as flash-attn does);
* ``timm.layers.DropPath``, ``addict.Dict``, ``huggingface_hub`` (only the names model.py imports).

On CPU, spconv refuses a conv bias in eval mode; ``patch_spconv_bias_for_cpu`` swaps the reference's
``SubMConv3d`` for a subclass that adds the bias after a bias-free conv (same parameters and keys).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

SHIMS: dict[str, str] = {
    "torch_scatter/__init__.py": '''"""Stand-in for torch_scatter (peftbench reference check): segment_csr only."""
import torch

__version__ = "stand-in"


def segment_csr(src, indptr, out=None, reduce="sum"):
    res = torch.segment_reduce(src, reduce, offsets=indptr, axis=0)
    empty = indptr[1:] == indptr[:-1]
    if bool(empty.any()):  # torch_scatter gives 0 on empty segments, segment_reduce -inf/nan
        res = res.masked_fill(empty.view(-1, *([1] * (res.dim() - 1))), 0)
    if out is not None:
        out.copy_(res)
        return out
    return res
''',
    "flash_attn/__init__.py": '''"""Stand-in for flash_attn (peftbench reference check): varlen packed attention with SDPA.

Like flash-attn it takes fp16/bf16 qkv and returns that dtype; the sums run in fp32.
"""
import torch
import torch.nn.functional as F

__version__ = "stand-in"


def _attend(qkv, dropout_p, softmax_scale, causal):
    # (S, L, 3, H, d) -> (S, L, H, d)
    q, k, v = qkv.float().permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=softmax_scale, is_causal=causal)
    return out.transpose(1, 2)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None,
                                     causal=False, **kwargs):
    out = torch.empty(qkv.shape[0], qkv.shape[2], qkv.shape[3], dtype=qkv.dtype, device=qkv.device)
    bounds = cu_seqlens.tolist()
    starts, lengths = bounds[:-1], [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    full = [s for s, n in zip(starts, lengths) if n == max_seqlen]
    if full:
        idx = torch.tensor(full, device=qkv.device).view(-1, 1) + torch.arange(max_seqlen, device=qkv.device)
        out[idx.flatten()] = _attend(qkv[idx], dropout_p, softmax_scale, causal).flatten(0, 1).to(qkv.dtype)
    for s, n in zip(starts, lengths):
        if n != max_seqlen and n > 0:
            out[s:s + n] = _attend(qkv[s:s + n].unsqueeze(0), dropout_p, softmax_scale, causal)[0].to(qkv.dtype)
    return out
''',
    "timm/__init__.py": '"""Stand-in for timm (peftbench reference check)."""\n__version__ = "stand-in"\n',
    "timm/layers/__init__.py": '''"""timm.layers.DropPath stand-in (timm semantics: one draw per row, scaled by keep)."""
import torch
from torch import nn


class DropPath(nn.Module):
    def __init__(self, drop_prob=0.0, scale_by_keep=True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            mask.div_(keep)
        return x * mask
''',
    "addict/__init__.py": '''"""Stand-in for addict.Dict (peftbench reference check): attribute access on a dict."""
__version__ = "stand-in"


class Dict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]
''',
    "huggingface_hub/__init__.py": '''"""Stand-in for huggingface_hub (peftbench reference check): offline, nothing to download."""
__version__ = "stand-in"


def hf_hub_download(*args, **kwargs):
    raise RuntimeError("huggingface_hub stand-in: no downloads in the reference check")


class PyTorchModelHubMixin:
    pass
''',
}


def ensure_shims(shim_dir: Path) -> None:
    for rel, text in SHIMS.items():
        path = shim_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    if str(shim_dir) not in sys.path:
        sys.path.append(str(shim_dir))  # last: real packages win


def import_reference(ref_root: Path) -> types.ModuleType:
    """Import ``sonata.model`` from a checkout without running ``sonata/__init__.py``
    (which also imports the data/transform modules and their dependencies)."""
    pkg_dir = ref_root / "sonata"
    if not (pkg_dir / "model.py").is_file():
        raise SystemExit(f"reference not found: {pkg_dir}/model.py (fetch facebookresearch/sonata into {ref_root})")
    ensure_shims(ref_root.parent / "shim")
    pkg = types.ModuleType("sonata")
    pkg.__path__ = [str(pkg_dir)]  # type: ignore[attr-defined]
    sys.modules["sonata"] = pkg
    import importlib

    model = importlib.import_module("sonata.model")
    return model


def patch_spconv_bias_for_cpu(ref_model: types.ModuleType) -> None:
    """spconv's CPU build refuses bias in eval mode: add it after a bias-free conv."""
    import spconv.pytorch as spconv

    base = spconv.SubMConv3d

    class SubMConv3dCPU(base):  # type: ignore[misc, valid-type]
        def forward(self, input, add_input=None):  # noqa: A002 - spconv's signature
            if input.features.is_cuda or self.bias is None:
                return super().forward(input, add_input)
            out = self._conv_forward(self.training, input, self.weight, None, add_input, name=self.name,
                                     sparse_unique_name=self._sparse_unique_name)
            return out.replace_feature(out.features + self.bias)

    ref_model.spconv.SubMConv3d = SubMConv3dCPU  # the reference looks it up at construction
