"""Submanifold sparse 3-D convolution (spconv ``SubMConv3d`` semantics) with two backends.

``out[p] = sum_{a,b,c} W[:, a, b, c, :] @ in[p + (a-c0, b-c0, c-c0)]`` with ``c0 = k//2``,
offsets along ``grid_coord`` (x, y, z) inside one scene; outputs only at input sites, inactive
sites contribute nothing. Weight layout is spconv 2.x KRSC ``[out, k, k, k, in]``, so
Sonata checkpoints load unchanged.

* ``torch``: pure torch (CPU or CUDA); neighbour pairs cached on the point per ``indice_key``.
* ``spconv``: spconv 2.x (fast on GPU; ``spconv_conv``); imported lazily, bias added outside
  the conv because the CPU build refuses it.
* ``gather``: one gather and one matmul (``gather_conv``). ``auto`` on CUDA picks it over spconv on
  levels of at most ``GATHER_MAX_SITES`` sites: a spconv call costs ~0.3 ms of host time whatever its
  size (its tuner lookup and kernel dispatch), more than a small level's whole conv on the device. Under
  CUDA half autocast with Triton, on every level, spconv or not: its Triton kernels (the gather inside the
  matmul) beat spconv.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from peftbench.backbone.autocast_off import autocast_off
from peftbench.backbone.function_apply import apply
from peftbench.backbone.structure import Point
from peftbench.errors import PeftbenchError

BACKENDS = ("auto", "torch", "spconv", "gather")  # gather: one gather + matmul (few channels)
_default_backend = "auto"


def set_default_backend(name: str) -> None:
    """Process-wide backend used by modules built with ``backend="auto"``."""
    global _default_backend
    _check_backend(name)
    _default_backend = name


def _check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise PeftbenchError(f"unknown sparse-conv backend {name!r}; choose from {BACKENDS}")


@functools.lru_cache(maxsize=1)
def spconv_available() -> bool:
    """True if ``spconv.pytorch`` imports (tried once; a broken install counts as absent)."""
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "use the torch backend"
        return False
    return True


# ``auto`` on CUDA: the gathered conv on levels of at most this many sites (0: spconv on every level).
GATHER_MAX_SITES = 65536


@dataclass(frozen=True)
class FactoredWeight:
    """A KRSC conv weight given as two factors, ``conv`` (out, k, k, k, mid) @ ``down`` (mid, in), both float32:
    GEM's Spatial Adapter's conv after its down-projection, as a conv of the block's input. The gathered conv takes
    the factors into its own autograd node (the product and its gradients inside), where the product as separate
    ops is five more nodes a block for the backward to walk (issue 12); other backends take ``product()``."""

    conv: Tensor
    down: Tensor

    def __len__(self) -> int:
        return self.conv.shape[0]

    def product(self) -> Tensor:
        return factor_product(self.conv, self.down)


def factor_product(conv: Tensor, down: Tensor) -> Tensor:
    """``conv @ down`` over ``conv``'s last axis, in their dtype (float32) with autocast off."""
    with autocast_off(conv.device.type):
        return torch.mm(conv.reshape(-1, conv.shape[-1]), down).view(*conv.shape[:-1], down.shape[-1])


def dense_weight(weight: Tensor | FactoredWeight) -> Tensor:
    """``weight`` as one tensor (a ``FactoredWeight``'s product)."""
    return weight.product() if isinstance(weight, FactoredWeight) else weight


def backend_for_sites(name: str, device: torch.device | str, sites: int) -> str:
    """The backend a conv over ``sites`` sites runs: ``resolve_backend``, except that ``auto`` takes the
    gathered conv on every level where its Triton kernels take the conv (``gather_conv.kernels_take``: CUDA half
    autocast), and otherwise instead of spconv on a level of at most ``GATHER_MAX_SITES`` sites."""
    device = torch.device(device)
    backend = resolve_backend(name, device)
    if name == "auto" and device.type == "cuda":
        from peftbench.backbone.gather_conv import kernels_take  # (imports this module)

        if kernels_take(device) or (backend == "spconv" and sites <= GATHER_MAX_SITES):
            return "gather"
    return backend


def resolve_backend(name: str, device: torch.device | str) -> str:
    """``auto`` -> spconv if importable and on CUDA, else torch; ``spconv`` must be importable."""
    _check_backend(name)
    device = torch.device(device)
    if name == "auto":
        return "spconv" if device.type == "cuda" and spconv_available() else "torch"
    if name == "spconv" and not spconv_available():
        raise PeftbenchError("sparse-conv backend 'spconv' requested but spconv is not importable: "
                             "install spconv (CPU) or spconv-cuXXX, or use backend 'torch'")
    return name


# ----------------------------------------------------------------------------- torch backend


@dataclass
class NeighbourMap:
    """Per kernel offset, the (output site, input site) pairs that exist.

    ``pairs[o]`` is ``None`` for the centre offset (identity). Independent of channels, so
    every conv of a level (and adapters with other widths) can share it.
    """

    num_sites: int
    kernel_size: int
    pairs: list[tuple[Tensor, Tensor] | None]


def kernel_offsets(kernel_size: int) -> Tensor:
    """(k^3, 3) offsets ``(a-c0, b-c0, c-c0)`` in the row-major order of ``W[:, a, b, c]``."""
    r = torch.arange(kernel_size) - kernel_size // 2
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def build_neighbour_map(grid_coord: Tensor, batch: Tensor, kernel_size: int) -> NeighbourMap:
    """Find every site's neighbours by packing (scene, x, y, z) into int64 keys.

    Sorting the keys once and ``searchsorted``-ing each shifted copy keeps it vectorised
    (one loop over the k^3 offsets, none over points). Sites are assumed unique per scene.
    """
    c0 = kernel_size // 2
    coord = grid_coord.long() + c0  # shift so coord + offset >= 0: no wrap between axes
    side = int(coord.max().item()) + c0 + 1 if len(coord) else 1
    batch = batch.long()
    if (int(batch.max().item()) + 1 if len(batch) else 1) * side**3 >= 2**62:
        raise PeftbenchError("sparse conv: grid too large to pack into int64 keys; use a coarser grid")
    keys = ((batch * side + coord[:, 0]) * side + coord[:, 1]) * side + coord[:, 2]
    sorted_keys, perm = torch.sort(keys)
    pairs: list[tuple[Tensor, Tensor] | None] = []
    for dx, dy, dz in kernel_offsets(kernel_size).tolist():
        if dx == dy == dz == 0:
            pairs.append(None)
            continue
        query = keys + ((dx * side + dy) * side + dz)
        pos = torch.searchsorted(sorted_keys, query).clamp_(max=max(len(keys) - 1, 0))
        found = sorted_keys[pos] == query
        out_idx = found.nonzero().squeeze(1)
        pairs.append((out_idx, perm[pos[out_idx]]))
    return NeighbourMap(len(keys), kernel_size, pairs)


def cached_neighbour_map(point: Point, indice_key: str | None, kernel_size: int) -> NeighbourMap:
    """``build_neighbour_map`` memoised in ``point["neighbours"][(indice_key, k)]``."""
    cache = point.setdefault("neighbours", {})
    key = (indice_key, kernel_size)
    nmap = cache.get(key)
    if nmap is None:
        nmap = build_neighbour_map(point["grid_coord"], point["batch"], kernel_size)
        cache[key] = nmap
    elif nmap.num_sites != len(point["grid_coord"]):
        raise PeftbenchError(f"sparse conv: cached neighbours for indice_key {indice_key!r} belong to "
                             "another point set; use one indice_key per level")
    return nmap


class _SubMConvFunction(torch.autograd.Function):
    """Gather -> matmul -> scatter-add per offset; backward reuses the same pairs.

    A custom backward saves only ``feat`` and ``weight`` (not the gathered rows) and skips
    the weight gradient when the weight is frozen (the common PEFT case).
    """

    @staticmethod
    def forward(ctx, feat: Tensor, weight: Tensor, nmap: NeighbourMap) -> Tensor:  # type: ignore[override]
        w = weight.reshape(weight.shape[0], -1, weight.shape[-1])  # (out, k^3, in)
        centre = nmap.pairs.index(None)
        out = feat @ w[:, centre].T
        for o, pair in enumerate(nmap.pairs):
            if pair is None or len(pair[0]) == 0:
                continue
            out_idx, in_idx = pair
            out.index_add_(0, out_idx, (feat.index_select(0, in_idx) @ w[:, o].T).to(out.dtype))
        ctx.save_for_backward(feat, weight)
        ctx.nmap = nmap
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        feat, weight = ctx.saved_tensors
        nmap: NeighbourMap = ctx.nmap
        need_feat, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.reshape(weight.shape[0], -1, weight.shape[-1]).to(grad.dtype)
        x = feat.to(grad.dtype)
        d_feat = torch.zeros_like(x) if need_feat else None
        d_w = torch.zeros_like(w) if need_weight else None
        for o, pair in enumerate(nmap.pairs):
            if pair is None:  # centre: every site with itself
                g, xs, in_idx = grad, x, None
            elif len(pair[0]) == 0:
                continue
            else:
                out_idx, in_idx = pair
                g = grad.index_select(0, out_idx)
                xs = x.index_select(0, in_idx) if need_weight else None
            if d_feat is not None:
                if in_idx is None:
                    d_feat += g @ w[:, o]
                else:
                    d_feat.index_add_(0, in_idx, g @ w[:, o])
            if d_w is not None:
                d_w[:, o] = g.T @ xs
        return (None if d_feat is None else d_feat.to(feat.dtype),
                None if d_w is None else d_w.reshape(weight.shape).to(weight.dtype), None)


def submconv_torch(feat: Tensor, weight: Tensor, nmap: NeighbourMap) -> Tensor:
    """Bias-free submanifold conv of ``feat`` (N, in) with KRSC ``weight`` over ``nmap``."""
    return apply(_SubMConvFunction, feat, weight, nmap)


class SubMConv3d(nn.Module):
    """Submanifold sparse conv on a ``Point``; state-dict keys exactly ``weight``, ``bias``.

    ``backend``: ``"torch"``, ``"spconv"``, ``"gather"`` (``gather_conv``: for few channels) or
    ``"auto"`` (the module-level default set by ``set_default_backend``, itself ``"auto"`` =
    spconv on CUDA when importable).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True,
                 indice_key: str | None = None, backend: str = "auto") -> None:
        super().__init__()
        _check_backend(backend)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.indice_key, self.backend = indice_key, backend
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)  # reference init; bias stays 0
        self._spconv: Any = None  # a SpconvRunner (plain attribute: no state-dict keys)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"bias={self.bias is not None}, indice_key={self.indice_key!r}, backend={self.backend!r}")

    def forward(self, point: Point, feat: Tensor, extra_weight: Tensor | FactoredWeight | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """The conv of ``feat``; with ``extra_weight`` (KRSC, same kernel and input channels, no bias) also
        that conv's output columns from the same gather / spconv call: ``(out, extra_out)``."""
        if feat.shape[0] != len(point["grid_coord"]) or feat.shape[-1] != self.in_channels:
            raise PeftbenchError(f"SubMConv3d: feat {tuple(feat.shape)} does not match "
                                 f"{len(point['grid_coord'])} sites x {self.in_channels} channels")
        backend = self._backend(point, feat.device)
        if backend == "gather":
            from peftbench.backbone.gather_conv import gather_submconv  # (imports this module)

            out = gather_submconv(point, feat, self.weight, extra_weight, self.bias, owner=self)  # the bias inside
        else:
            weight = self.weight
            if extra_weight is not None:
                weight = torch.cat([weight, dense_weight(extra_weight).to(weight.dtype)])
            if backend == "spconv":
                out = self._forward_spconv(point, feat, weight)
            else:
                out = submconv_torch(feat, weight, cached_neighbour_map(point, self.indice_key, self.kernel_size))
        if extra_weight is not None:  # split: its backward is one cat (two slices' would be two zero fills)
            out, extra = out.split([self.out_channels, len(extra_weight)], dim=1)
        if self.bias is not None and backend != "gather":
            out = out + self.bias.to(out.dtype)
        return out if extra_weight is None else (out, extra)

    def build_index(self, point: Point) -> None:
        """Build the index structures this conv would build on its first call on ``point`` (a level's
        first conv builds them for every conv of the level); spconv's wait on the device while it does.
        ``PointTransformerV3.build_sites`` calls this for every level before any block runs."""
        backend = self._backend(point, point["grid_coord"].device)
        if backend == "gather":
            from peftbench.backbone.gather_conv import cached_neighbour_table

            cached_neighbour_table(point, self.kernel_size)
        elif backend == "spconv":
            from peftbench.backbone.spconv_conv import SpconvRunner, build_index_pairs

            if self._spconv is None:
                self._spconv = SpconvRunner(self.indice_key, self.kernel_size)
            build_index_pairs(self._spconv, point, self.training)
        elif backend == "torch":
            cached_neighbour_map(point, self.indice_key, self.kernel_size)

    def _backend(self, point: Point, device: torch.device) -> str:
        return backend_for_sites(_default_backend if self.backend == "auto" else self.backend, device,
                                 len(point["grid_coord"]))

    def _forward_spconv(self, point: Point, feat: Tensor, weight: Tensor) -> Tensor:
        from peftbench.backbone.spconv_conv import SpconvRunner, spconv_submconv  # (imports gather_conv)

        if self._spconv is None:
            self._spconv = SpconvRunner(self.indice_key, self.kernel_size)
        return spconv_submconv(self._spconv, point, feat, weight, self.training)
