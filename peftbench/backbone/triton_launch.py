"""Launch a Triton kernel through its compiled kernel once compiled for the arguments' specialization.

``kernel[grid](...)`` goes through ``JITFunction.run``: argument binding, specialization and a cache lookup on
every call. On an H100 host (``scripts/layer_norm_bench.py``, session 34) that is 35.8 us a launch against 22.4
through the compiled kernel, and from autograd's backward thread ~54 against ~18, where every backward kernel
launches. ``launch`` keys the compiled kernel on what Triton specializes on (dtypes, 16-byte alignment of
pointers, integers equal to 1 or divisible by 16, integer width) and the constexprs, so a hit is a kernel Triton
would also have chosen; a miss, or Triton's interpreter, goes through ``kernel[grid]``.
Imported only with the kernel modules (Triton installed).
"""

from __future__ import annotations

from typing import Any

import torch
from triton.runtime.jit import JITFunction

DIRECT = 1  # 0: every launch through ``kernel[grid]`` (A/Bs)
_COMPILED: dict[tuple, Any] = {}
_INT32 = (-2**31, 2**31)


def _specialization(args: tuple) -> tuple:
    """What Triton's binder distinguishes for each of ``args`` (finer where a parameter is not specialized: still
    sound). One loop, as it runs on every launch: ~1 us less than a call per argument for 21 arguments on a 2-core
    CPU, of 7-9 (``scripts/launch_host_cost.py``)."""
    lo, hi = _INT32
    key = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            key.append((arg.dtype, not arg.data_ptr() % 16))
        elif type(arg) is bool or arg is None:
            key.append(arg)
        elif isinstance(arg, int):
            key.append((arg == 1, not arg % 16, lo <= arg < hi, arg >= 0))
        elif isinstance(arg, float):  # numpy's float64 too, as before
            key.append(float)
        else:
            raise TypeError(f"no launch specialization for {type(arg).__name__}")
    return tuple(key)


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv`` for host code: Triton's is a constexpr function, ~2.5 us a call on a 2-core CPU against 0.1
    here, and grids and tile sizes take several a launch (hundreds of calls in a GEM training step)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for host code (see ``cdiv``), for n >= 1."""
    return 1 << (n - 1).bit_length()


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, num_warps: int | None = None, **constexprs: Any) -> None:
    """``kernel[grid](*args, num_warps=num_warps, **constexprs)`` (every parameter after ``args`` given by name)."""
    options = {} if num_warps is None else {"num_warps": num_warps}
    if not DIRECT or not isinstance(kernel, JITFunction):  # off, or Triton's interpreter
        kernel[grid](*args, **options, **constexprs)
        return
    key = (kernel, torch.cuda.current_device(), num_warps, *constexprs.items(), _specialization(args))
    compiled = _COMPILED.get(key)
    if compiled is None:
        _COMPILED[key] = kernel[grid](*args, **options, **constexprs)
        return
    named = [constexprs[name] for name in kernel.arg_names[len(args):]]
    compiled[(*grid, 1, 1)[:3]](*args, *named)
