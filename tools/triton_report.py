"""Compile the attention Triton kernels ahead of time for a GPU target (default sm_90a, the H100/H200) without a
GPU, and print registers, spills and shared memory per kernel and configuration.

    python tools/triton_report.py [--arch 90] [--dtype bf16] [--family next|current|all] [--shape NAME ...]

Each launch is recorded by calling the family's host launcher with CPU tensors of the shape (nothing runs), the
autotuner's configurations are pruned as at run time, and each survivor is compiled with ``triton.compile`` for
``GPUTarget("cuda", arch, 32)``. Arguments are specialised as Triton does at launch (integers equal to 1 become
constants, pointers and integers divisible by 16 carry that hint). Registers and spills come from running ptxas
-v on the generated PTX; shared memory from the compiled kernel's metadata; wgmma/mma counts the Hopper
warpgroup and the older warp-level tensor-core instructions in the PTX.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

SHAPES = {  # name: (B, H, L, S, D)
    "ViT-B/16 224": (1, 12, 197, 197, 64),
    "ViT-H/14 224": (1, 16, 257, 257, 80),
    "PAVER temporal": (8, 12, 5, 5, 64),
    "D=128": (1, 8, 300, 300, 128),
}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int8: "i8",
                 torch.bool: "i1"}


class _Recorder:
    """Stands in for ``wrap_triton``: records (kernel, args, kwargs) instead of launching."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel):
        rec = self

        class _Grid:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: rec.launches.append((kernel, args, kwargs))
        return _Grid()


def _signature(fn, values: dict):
    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = values[p.name]
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            constexprs[(i,)] = v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TRITON_TYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            if v == 1:
                sig[p.name] = "constexpr"
                constexprs[(i,)] = 1
            else:
                sig[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{p.name}: {type(v).__name__}")
    return sig, constexprs, attrs


def _ptxas_stats(ptx: str, arch: int) -> tuple[int, int, int]:
    from triton.backends.nvidia import compiler as nv

    ptxas = nv.get_ptxas(arch).path if hasattr(nv, "get_ptxas") else "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        res = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}a", str(path), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True, check=True)
    text = res.stderr + res.stdout
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spill_st = int(re.search(r"(\d+) bytes spill stores", text).group(1))
    spill_ld = int(re.search(r"(\d+) bytes spill loads", text).group(1))
    return regs, spill_st, spill_ld


def _launches(family: str, shape, dtype):
    B, H, L, S, D = shape
    q = torch.zeros(B, H, L, D, dtype=dtype)
    k = torch.zeros(B, H, S, D, dtype=dtype)
    v = torch.zeros(B, H, S, D, dtype=dtype)
    rec = _Recorder()
    if family == "next":
        from pyvision_fast.triton import flash

        out, lse = flash.forward(q, k, v, None, False, D ** -0.5, 0.0, 0, wrap=rec)
        flash.backward(out, q, k, v, out, lse, None, False, D ** -0.5, 0.0, 0, wrap=rec)
    else:
        from pyvision_fast.triton import attention as tri

        tri._forward_launch(q, k, v, None, False, D ** -0.5, 0.0, 0, wrap=rec)
        out = torch.zeros_like(q)
        lse = torch.zeros(B, H, L)
        tri._backward_launch(out, q, k, v, out, lse, None, False, D ** -0.5, 0.0, 0, wrap=rec)
    return rec.launches


def report(families, shapes, dtype, arch: int) -> list[dict]:
    rows = []
    target = GPUTarget("cuda", arch, 32)
    for family in families:
        for shape_name in shapes:
            for kernel, args, kwargs in _launches(family, SHAPES[shape_name], dtype):
                if isinstance(kernel, Autotuner):
                    fn = kernel.fn
                    named = dict(zip(kernel.arg_names, args))
                    configs = kernel.configs
                    if kernel.early_config_prune:
                        configs = kernel.early_config_prune(configs, named, **kwargs)
                else:
                    fn, named, configs = kernel, dict(zip(kernel.arg_names, args)), [None]
                for cfg in configs:
                    values = {**named, **kwargs, **(cfg.kwargs if cfg else {})}
                    warps = cfg.num_warps if cfg else 4
                    stages = cfg.num_stages if cfg else 3
                    sig, constexprs, attrs = _signature(fn, values)
                    row = dict(family=family, shape=shape_name, kernel=fn.__name__,
                               config=(", ".join(f"{k}={v}" for k, v in cfg.kwargs.items()) if cfg else "-")
                               + f", w{warps} s{stages}")
                    try:
                        c = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target,
                                           options={"num_warps": warps, "num_stages": stages})
                        regs, st, ld = _ptxas_stats(c.asm["ptx"], arch)
                        row.update(regs=regs, spill_stores=st, spill_loads=ld, shared=c.metadata.shared,
                                   wgmma=c.asm["ptx"].count("wgmma.mma_async"), mma=c.asm["ptx"].count("mma.sync"))
                    except Exception as exc:  # noqa: BLE001 - reported in the table
                        row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    rows.append(row)
                    print(_format(row), flush=True)
    return rows


def _format(row: dict) -> str:
    head = f"{row['family']:7s} {row['shape']:15s} {row['kernel']:12s} {row['config']:48s}"
    if "error" in row:
        return head + " ERROR " + row["error"]
    return head + f" regs {row['regs']:4d}  spills st/ld {row['spill_stores']:5d}/{row['spill_loads']:<5d}" \
                  f" smem {row['shared'] / 1024:6.1f} KiB  wgmma/mma {row['wgmma']}/{row['mma']}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    parser.add_argument("--family", choices=["next", "current", "all"], default="next")
    parser.add_argument("--shape", nargs="*", choices=sorted(SHAPES), default=sorted(SHAPES))
    args = parser.parse_args(argv)
    os.environ.setdefault("PVF_TRITON_AUTOTUNE", "1")
    families = ["current", "next"] if args.family == "all" else [args.family]
    rows = report(families, args.shape, _DTYPES[args.dtype], args.arch)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
