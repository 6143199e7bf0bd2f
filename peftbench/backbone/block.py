"""The PTv3 block, with named slots that PEFT methods fill instead of patching ``forward``.

    x = x + cpe(x)        + Σ cpe_branches(x)          (Spatial Adapter)
    h = norm1(x);  x = x + drop_path(attn(h) + Σ attn_branches(h))   (Context Adapter)
    h = norm2(x);  x = x + drop_path(mlp(h)  + Σ mlp_branches(h))    (parallel adapter)
    x = x + Σ post_mlp(x)                                   (sequential bottleneck adapter)

Every branch is called as ``branch(point, x)``, except that a ``cpe_branches`` entry that is a
``CPEConvBranch`` with the CPE's kernel rides on the CPE's own conv call. Empty slots add no state-dict
keys, so a block with no method attached is exactly Sonata's block (same keys, same numbers).
"""

from __future__ import annotations

import torch
from torch import nn

from peftbench.backbone.attention import SerializedAttention
from peftbench.backbone.layer_norm import LayerNorm
from peftbench.backbone.sparse_conv import FactoredWeight, SubMConv3d, dense_weight
from peftbench.backbone.structure import Point

# 1: where every branch beside the attention (or the MLP) ``reads_half_input`` (it reads its input only through
# float32 products of any float dtype: GEM's Context Adapter), the norm writes its output in the autocast dtype, as
# where no branch reads it: the attention's cast of it and that cast's backward go (two launches a block), and the
# norm's output, the branch's read of it, its gradient and the gradients' sum move half the bytes; the branch then
# reads the input rounded to the autocast dtype, as the attention does (issue 12; off until timed on a GPU)
HALF_BRANCH_INPUT = 0
# 1: where a block's only CPE branch rides on the CPE's conv, that branch adds the block's input x in its last op
# (GEM's Spatial Adapter: its ReLU-linear kernel), not an add after it; and in evaluation (autograd off, no drop
# path) a single branch beside the attention that ``adds_residual`` (GEM's Context Adapter: its read-out kernel)
# adds x too. Each is a launch and a write and read of the level's (N, C) float32 features fewer a block (and an
# autograd node in training), the same sums in the same order (issue 12; off until timed on a GPU)
FOLD_RESIDUAL = 0


class DropPath(nn.Module):
    """Stochastic depth per point (timm semantics on (N, C) features)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], 1).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * keep


class MLP(nn.Module):
    def __init__(self, channels: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class PositionEncoding(nn.Sequential):
    """CPE: sparse conv -> Linear -> LayerNorm (keys ``cpe.0``, ``cpe.1``, ``cpe.2``)."""

    def __init__(self, channels: int, indice_key: str) -> None:
        super().__init__(SubMConv3d(channels, channels, 3, bias=True, indice_key=indice_key),
                         nn.Linear(channels, channels), LayerNorm(channels))

    def forward(self, point: Point, x: torch.Tensor,  # type: ignore[override]
                extra_conv_weight: torch.Tensor | FactoredWeight | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The CPE of ``x``; with ``extra_conv_weight``, also that conv of ``x`` from the same conv call."""
        conv, linear, norm = self
        if extra_conv_weight is None:
            return norm(linear(conv(point, x)))
        out, extra = conv(point, x, extra_conv_weight)
        return norm(linear(out)), extra


class CPEConvBranch(nn.Module):
    """A ``cpe_branches`` entry whose first op is a bias-free sparse conv of the block's input.

    Where its ``kernel_size`` is the CPE's, the block computes that conv as extra output columns of the
    CPE's conv (``conv_weight``: one gather or spconv call for both, the same values) and passes them
    to ``after_conv``; elsewhere it calls ``forward``. On a GPU a sparse-conv call costs more host time
    than its small-level work (GEM's Spatial Adapter: 24 of them a step, twice with backward).
    """

    kernel_size: int

    def conv_weight(self) -> torch.Tensor | FactoredWeight:
        """KRSC ``(out, k, k, k, in)``: the branch's conv as a conv of the block's input (or its factors)."""
        raise NotImplementedError

    def after_conv(self, point: Point, conv_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The branch's output from its conv's output ``conv_out`` (and the block input ``x``)."""
        raise NotImplementedError

    def add_after_conv(self, point: Point, conv_out: torch.Tensor, x: torch.Tensor, out: torch.Tensor,
                       residual: torch.Tensor | None = None) -> torch.Tensor:
        """``out + after_conv(...)``, and with ``residual``, ``residual + (that)``; a branch may fuse the sums into
        its last op."""
        out = out + self.after_conv(point, conv_out, x)
        return out if residual is None else residual + out


class Block(nn.Module):
    def __init__(self, channels: int, num_heads: int, patch_size: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, drop_path: float = 0.0, order_index: int = 0,
                 indice_key: str = "stage0", enable_flash: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.indice_key = indice_key
        self.cpe = PositionEncoding(channels, indice_key)
        self.norm1 = nn.Sequential(LayerNorm(channels))
        self.attn = SerializedAttention(channels, num_heads, patch_size, qkv_bias, qk_scale, attn_drop,
                                        proj_drop, order_index, enable_flash)
        self.norm2 = nn.Sequential(LayerNorm(channels))
        self.mlp = nn.Sequential(MLP(channels, int(channels * mlp_ratio), proj_drop))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe_branches = nn.ModuleDict()
        self.attn_branches = nn.ModuleDict()
        self.mlp_branches = nn.ModuleDict()
        self.post_mlp = nn.ModuleDict()

    def forward(self, point: Point) -> Point:
        # The patch layout first (host ints, eager): under train.compile one graph then runs from
        # the CPE's conv to the attention's patches instead of breaking before the qkv projection.
        layout = self.attn.layout(point)
        x = point.feat
        x = self._position_encoding(point, x)
        h = _norm(self.norm1, x, self.attn_branches)
        x = self._attention(point, x, h, layout)
        h = _norm(self.norm2, x, self.mlp_branches)
        x = x + self.drop_path(_with_branches(self.mlp(h), self.mlp_branches, point, h))
        if self.post_mlp:
            x = _with_branches(x, self.post_mlp, point, x)
        point.feat = x
        return point

    def _attention(self, point: Point, x: torch.Tensor, h: torch.Tensor, layout) -> torch.Tensor:
        """``x + drop_path(attn(h) + Σ attn_branches(h))``; with ``FOLD_RESIDUAL``, in evaluation, a single branch
        that ``adds_residual`` adds ``x`` itself."""
        out = self.attn(point, h, layout)
        if FOLD_RESIDUAL and len(self.attn_branches) == 1 and not torch.is_grad_enabled():
            (branch,) = self.attn_branches.values()
            drops = isinstance(self.drop_path, DropPath) and self.drop_path.training
            if getattr(branch, "adds_residual", False) and not drops:
                return branch(point, h, base=out, residual=x)
        return x + self.drop_path(_with_branches(out, self.attn_branches, point, h))

    def _position_encoding(self, point: Point, x: torch.Tensor) -> torch.Tensor:
        """``x + (cpe(x) + Σ cpe_branches(x))``, the ``CPEConvBranch`` entries through the CPE's conv call; with
        ``FOLD_RESIDUAL``, a single such branch adds ``x`` itself."""
        kernel = self.cpe[0].kernel_size
        shared = [b for b in self.cpe_branches.values() if isinstance(b, CPEConvBranch) and b.kernel_size == kernel]
        if not shared:
            return x + _with_branches(self.cpe(point, x), self.cpe_branches, point, x)
        weights = [branch.conv_weight() for branch in shared]
        out, extra = self.cpe(point, x, torch.cat([dense_weight(w) for w in weights]) if len(weights) > 1
                              else weights[0])
        conv_outs = extra.split([len(w) for w in weights], dim=1) if len(shared) > 1 else (extra,)
        fold = FOLD_RESIDUAL and len(self.cpe_branches) == 1
        for branch, conv_out in zip(shared, conv_outs):
            out = branch.add_after_conv(point, conv_out, x, out, residual=x if fold else None)
        for branch in self.cpe_branches.values():
            if branch not in shared:
                out = out + branch(point, x)
        return out if fold else x + out


def _norm(norm: nn.Sequential, x: torch.Tensor, branches: nn.ModuleDict) -> torch.Tensor:
    """``norm(x)`` for the attention or the MLP, whose first op is a linear; where no branch reads it too (or, with
    ``HALF_BRANCH_INPUT``, every branch ``reads_half_input``), the norm may write it in the autocast dtype that
    linear casts it to (``LayerNorm``'s ``linear_input``)."""
    half = not branches or (HALF_BRANCH_INPUT and all(getattr(b, "reads_half_input", False)
                                                      for b in branches.values()))
    return norm[0](x, linear_input=half)


def _with_branches(out: torch.Tensor, slot: nn.ModuleDict, point: Point, x: torch.Tensor) -> torch.Tensor:
    """``out`` plus every branch of ``slot`` called on ``x``; an empty slot adds no op (not even ``+ 0``:
    each is a kernel and an autograd node in every block). A branch with ``adds_to_base`` returns the sum itself
    (``branch(point, x, base=out)``), fused into its last op."""
    for branch in slot.values():
        out = branch(point, x, base=out) if getattr(branch, "adds_to_base", False) else out + branch(point, x)
    return out
