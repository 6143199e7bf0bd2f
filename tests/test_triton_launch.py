"""``triton_launch.launch``: its specialization key separates what Triton compiles apart, and on CUDA a
launch through the compiled kernel gives the kernel's result for aligned and unaligned pointers, new sizes and
constexprs alike."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from peftbench.backbone.triton_launch import _specialization, cdiv, launch, next_power_of_2  # noqa: E402


@triton.jit
def _scaled_copy_kernel(x_ptr, y_ptr, n, factor, BLOCK: tl.constexpr, NEGATE: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n, other=0.0) * factor
    tl.store(y_ptr + i, -x if NEGATE else x, mask=i < n)


def test_specialization_separates_what_triton_compiles_apart():
    def spec(arg):
        return _specialization((arg,))

    base = torch.zeros(64)
    assert spec(base) != spec(base[1:])          # 16-byte alignment
    assert spec(base) != spec(base.half())       # dtype
    assert spec(base[4:]) == spec(base)          # 16 bytes on: aligned again
    assert len({spec(n) for n in (1, 16, 17, 2**31, -3)}) == 5  # 1, divisible by 16, other, i64, sign
    assert spec(17) == spec(18)
    assert spec(0.5) == spec(2.0) == spec(np.float64(2.0))
    assert spec(True) != spec(1) and spec(None) != spec(False)
    assert spec(torch.nn.Parameter(base)) == spec(base)
    assert _specialization((base, 3, 0.5)) == spec(base) + spec(3) + spec(0.5)
    with pytest.raises(TypeError):
        spec("x")


# ints that change with the batch: its points, its scenes (n_cols = scenes x latents), and the row programs and tiles a
# program derived from the points
BATCH_INTS = {"rows", "n_cols", "programs", "tiles_per_program"}


def _unspecialized(kernel) -> set[str]:
    """The parameters a kernel's ``do_not_specialize`` names (a JITFunction keeps indices; the interpreter names)."""
    given = kernel.do_not_specialize if hasattr(kernel, "do_not_specialize") else kernel.kwargs["do_not_specialize"]
    return {kernel.arg_names[a] if isinstance(a, int) else a for a in given or ()}


@pytest.mark.parametrize("module", ["triton_gather_conv", "triton_latent_attention", "triton_latent_backward",
                                    "triton_relu_linear", "triton_layer_norm"])
def test_kernels_compile_no_variant_per_batch(module):
    """No int that changes with the batch is specialized: Triton would compile another variant of a kernel the first
    time one is 1 or a multiple of 16, in the middle of a trial (H100, session 41: a paper-shaped GEM trial's steps took
    ~1.1 s but one 17 s, most likely so)."""
    kernels = [f for name, f in vars(importlib.import_module(f"peftbench.backbone.{module}")).items()
               if name.endswith("_kernel") and hasattr(f, "arg_names")]
    assert kernels
    for kernel in kernels:
        assert BATCH_INTS & set(kernel.arg_names) <= _unspecialized(kernel), kernel.arg_names


def test_host_cdiv_and_next_power_of_2_are_triton_s():
    for n in [*range(1, 300), 4095, 4096, 4097, 2**31 - 1, 2**31, 2**40 + 3]:
        assert next_power_of_2(n) == triton.next_power_of_2(n)
        for d in (1, 3, 16, 64, 1000):
            assert cdiv(n, d) == triton.cdiv(n, d)
    assert cdiv(0, 16) == triton.cdiv(0, 16) == 0


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("direct_launcher", [0, 1])
def test_launch_repeats_give_the_kernels_result(monkeypatch, direct_launcher):
    """Misses and hits in turns: aligned and unaligned views, sizes 1 / 16 / 37, both constexpr values; hits through
    ``compiled[grid]`` or the launcher itself (on CUDA: the direct path's only test against a real launcher)."""
    from peftbench.backbone import triton_launch

    monkeypatch.setattr(triton_launch, "DIRECT_LAUNCHER", direct_launcher)
    monkeypatch.setattr(triton_launch, "_COMPILED", {})
    x = torch.arange(80, dtype=torch.float32, device=DEVICE)
    for _ in range(2):  # the second pass hits the compiled kernels
        for start, n in ((0, 37), (1, 37), (0, 16), (3, 1), (4, 16)):
            for negate in (False, True):
                y = torch.full((80,), 7.0, device=DEVICE)
                launch(_scaled_copy_kernel, (triton.cdiv(n, 16),), x[start:], y[start:], n, 0.5, BLOCK=16,
                       NEGATE=negate, num_warps=1)
                want = x[start:start + n] * (-0.5 if negate else 0.5)
                torch.testing.assert_close(y[start:start + n], want)
                assert (y[:start] == 7).all() and (y[start + n:] == 7).all()


class _Launcher:
    """Stands in for Triton's ``CudaLauncher``: records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, gridX, gridY, gridZ, stream, function, kernel_metadata, launch_metadata, launch_enter_hook,
                 launch_exit_hook, *args):
        self.calls.append((gridX, gridY, gridZ, stream, function, kernel_metadata, launch_metadata,
                           launch_enter_hook, launch_exit_hook, *args))


class _OtherLauncher(_Launcher):
    def __call__(self, gridX, gridY, gridZ, stream, function, launch_cooperative_grid, *args):  # another signature
        self.calls.append(("other", *args))


class _PositionalLauncher(_Launcher):
    def __call__(self, gridX, gridY, gridZ, stream, function, *args):  # Triton 3.6's: the rest in the same order
        self.calls.append((gridX, gridY, gridZ, stream, function, *args))


class _Compiled:
    """Stands in for Triton's ``CompiledKernel``: ``run``, ``function``, ``packed_metadata``, ``[grid]``."""

    def __init__(self, run) -> None:
        self.run, self.function, self.packed_metadata = run, "function", ("metadata",)
        self.indexed: list[tuple] = []

    def __getitem__(self, grid):
        return lambda *args: self.indexed.append((grid, *args))


def test_direct_launcher_calls_the_launcher_without_hooks_or_falls_back(monkeypatch):
    from peftbench.backbone import triton_launch

    monkeypatch.setattr(triton_launch, "DIRECT_LAUNCHER", 1)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1000 + device, raising=False)
    compiled = _Compiled(_Launcher())
    triton_launch._direct_launcher(compiled)(4, 2, 1, 3, "x", 7, 16)
    assert compiled.run.calls == [(4, 2, 1, 1003, "function", ("metadata",), None, None, None, "x", 7, 16)]
    assert compiled.indexed == []

    positional = _Compiled(_PositionalLauncher())
    triton_launch._direct_launcher(positional)(4, 2, 1, 3, "x")
    assert positional.run.calls == [(4, 2, 1, 1003, "function", ("metadata",), None, None, None, "x")]

    other = _Compiled(_OtherLauncher())  # a launcher of another signature: through [grid]
    triton_launch._direct_launcher(other)(4, 2, 1, 3, "x", 7)
    assert other.run.calls == [] and other.indexed == [((4, 2, 1), "x", 7)]

    monkeypatch.setattr(triton_launch, "DIRECT_LAUNCHER", 0)  # off: through [grid]
    off = _Compiled(_Launcher())
    triton_launch._direct_launcher(off)(4, 2, 1, 3, "x")
    assert off.run.calls == [] and off.indexed == [((4, 2, 1), "x")]
    monkeypatch.setattr(triton_launch, "DIRECT_LAUNCHER", 1)

    hooks = getattr(getattr(triton, "knobs", None), "runtime", None)
    if hooks is not None:  # a launch hook set: through [grid], which calls it
        monkeypatch.setattr(hooks, "launch_enter_hook", lambda *args: None)
        hooked = _Compiled(_Launcher())
        triton_launch._direct_launcher(hooked)(4, 2, 1, 3, "x")
        assert hooked.run.calls == [] and hooked.indexed == [((4, 2, 1), "x")]


def test_a_launcher_is_kept_per_direct_launcher_setting(monkeypatch):
    """Switching ``DIRECT_LAUNCHER`` in a process (an A/B in turns) compiles once per setting and then launches each
    setting's way: through the launcher itself with it on, through ``compiled[grid]`` with it off."""
    from triton.runtime.jit import JITFunction

    from peftbench.backbone import triton_launch

    monkeypatch.setattr(triton_launch, "_COMPILED", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1000 + device, raising=False)
    built = []

    class _Kernel(JITFunction):  # a miss compiles through kernel[grid](...), which returns the compiled kernel
        arg_names = ["x", "BLOCK"]
        __hash__ = object.__hash__  # (JITFunction's hashes its source)

        def __init__(self) -> None:
            pass

        def __getitem__(self, grid):
            def compile_and_run(*args, **constexprs):
                built.append(_Compiled(_Launcher()))
                return built[-1]
            return compile_and_run

    kernel = _Kernel()
    for setting in (0, 1, 0, 1):
        monkeypatch.setattr(triton_launch, "DIRECT_LAUNCHER", setting)
        launch(kernel, (2,), 5, BLOCK=16)
    assert len(built) == 2
    off, on = built
    assert off.indexed == [((2, 1, 1), 5, 16)] and off.run.calls == []
    assert on.run.calls == [(2, 1, 1, 1000, "function", ("metadata",), None, None, None, 5, 16)] and on.indexed == []


def test_installed_triton_launcher_has_the_signature_the_direct_path_takes():
    """Else every launch silently takes the slower ``compiled[grid]`` path."""
    from peftbench.backbone.triton_launch import launcher_signature_known
    driver = pytest.importorskip("triton.backends.nvidia.driver")
    assert launcher_signature_known(driver.CudaLauncher)
    assert not triton.knobs.runtime.launch_enter_hook.calls and not triton.knobs.runtime.launch_exit_hook.calls
