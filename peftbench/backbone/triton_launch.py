"""Launch a Triton kernel through its compiled kernel once compiled for the arguments' specialization.

``kernel[grid](...)`` goes through ``JITFunction.run``: argument binding, specialization and a cache lookup on
every call. On an H100 host (``scripts/layer_norm_bench.py``, session 34) that is 35.8 us a launch against 22.4
through the compiled kernel, and from autograd's backward thread ~54 against ~18, where every backward kernel
launches. ``launch`` keys the compiled kernel on what Triton specializes on (dtypes, 16-byte alignment of
pointers, integers equal to 1 or divisible by 16, integer width) and the constexprs, so a hit is a kernel Triton
would also have chosen; a miss, or Triton's interpreter, goes through ``kernel[grid]``.

With ``DIRECT_LAUNCHER`` on, a hit calls the compiled kernel's launcher itself (``_direct_launcher``) where its
signature is the one known: ``compiled[grid](...)`` also looks up the device and stream, builds launch metadata and
calls Triton's launch hooks on every launch, for nothing when no hook is set (H100, Triton 3.6: 7.6 -> 4.8 us a
launch, ``scripts/triton_launch_cost.py``).

The kernels leave every int that changes with the batch unspecialized (``do_not_specialize``: the points, the
scenes' latent columns, the row programs and tiles a program): Triton would otherwise compile another variant the
first time one is 1 or a multiple of 16, in the middle of a trial (``tests/test_triton_launch.py``).
Imported only with the kernel modules (Triton installed).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import triton
from triton.runtime.jit import JITFunction

DIRECT = 1  # 0: every launch through ``kernel[grid]`` (A/Bs)
# 1: hits through the compiled kernel's launcher (``_direct_launcher``); 0: through ``compiled[grid]``. CUDA tests
# passed with it (H100, Triton 3.6, session 40); a GEM training step 0.985x, frozen 1.003x in turns
DIRECT_LAUNCHER = 1
_COMPILED: dict[tuple, Any] = {}
_INT32 = (-2**31, 2**31)


def _specialization(args: tuple) -> tuple:
    """What Triton's binder distinguishes for each of ``args`` (finer where a parameter is not specialized: still
    sound). One loop, the exact types first, as it runs on every launch: ~6.5 -> 5.3 us for 21 arguments on a
    2-core CPU (``scripts/launch_host_cost.py``)."""
    lo, hi = _INT32
    key = []
    append = key.append
    for arg in args:
        kind = type(arg)
        if kind is bool or arg is None:
            append(arg)
        elif kind is int:
            append((arg == 1, not arg % 16, lo <= arg < hi, arg >= 0))
        elif kind is float:
            append(float)
        elif isinstance(arg, torch.Tensor):
            append((arg.dtype, not arg.data_ptr() % 16))
        elif isinstance(arg, int):  # an int subclass
            append((arg == 1, not arg % 16, lo <= arg < hi, arg >= 0))
        elif isinstance(arg, float):  # numpy's float64 too, as before
            append(float)
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
    device = torch.cuda.current_device()
    # DIRECT_LAUNCHER in the key: a launcher is built for the setting it was made under (A/Bs in one process)
    key = (kernel, device, DIRECT_LAUNCHER, num_warps, *constexprs.items(), _specialization(args))
    run = _COMPILED.get(key)
    if run is None:
        _COMPILED[key] = _direct_launcher(kernel[grid](*args, **options, **constexprs))
        return
    grid = (*grid, 1, 1)
    run(grid[0], grid[1], grid[2], device, *args, *[constexprs[name] for name in kernel.arg_names[len(args):]])


# the launcher's parameters before the kernel's arguments (``CudaLauncher.__call__``, Triton 3.7; 3.6 names the first
# five and takes the rest as ``*args``, in the same order: ``JITFunction.run`` calls both so)
_LAUNCHER_PARAMS = ("gridX", "gridY", "gridZ", "stream", "function", "kernel_metadata", "launch_metadata",
                    "launch_enter_hook", "launch_exit_hook")


def launcher_signature_known(launcher_type: type) -> bool:
    """Whether ``launcher_type.__call__`` takes ``_LAUNCHER_PARAMS`` then the kernel's arguments."""
    try:
        params = list(inspect.signature(launcher_type.__call__).parameters.values())[1:]
    except (TypeError, ValueError):  # not a Python launcher
        return False
    names = tuple(p.name for p in params)
    if names[:5] != _LAUNCHER_PARAMS[:5] or len(params) < 6:
        return False
    return names[5:9] == _LAUNCHER_PARAMS[5:] or params[5].kind is inspect.Parameter.VAR_POSITIONAL


def _direct_launcher(compiled: Any) -> Callable[..., None]:
    """``(gx, gy, gz, device, *args)`` launching ``compiled`` on the device's current stream: with ``DIRECT_LAUNCHER``
    on, a launcher of a known signature and no launch hook set, through the launcher with no launch metadata or
    hooks; else through ``compiled[grid]``."""
    run = compiled.run if DIRECT_LAUNCHER else None
    if run is None or not launcher_signature_known(type(run)) or _launch_hooks_set():
        return lambda gx, gy, gz, device, *args: compiled[(gx, gy, gz)](*args)
    function, metadata, stream_of = compiled.function, compiled.packed_metadata, torch._C._cuda_getCurrentRawStream
    return lambda gx, gy, gz, device, *args: run(gx, gy, gz, stream_of(device), function, metadata, None, None, None,
                                                 *args)


def _launch_hooks_set() -> bool:
    """Whether a Triton launch hook is set (a Triton without ``triton.knobs``: assumed so)."""
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None:
        return True
    hooks = [getattr(runtime, name, True) for name in ("launch_enter_hook", "launch_exit_hook")]
    return any(hook is not None and getattr(hook, "calls", True) for hook in hooks)
