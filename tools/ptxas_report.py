"""Registers, shared memory, stack frame and spills of every CUDA kernel, as ptxas reports them for one
architecture (default sm_90), with the flags the build uses. Needs nvcc, no GPU.

    python tools/ptxas_report.py [--arch sm_90] [--markdown benchmarks/results/gpu-kernels.md]

Exits 1 if any kernel spills.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]

_FUNCTION = re.compile(r"ptxas info\s*: (?:Compiling entry function|Function properties for) '?([^' ]+)'?")
_COMPILING = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?")


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def short(name: str) -> str:
    """Kernel name without namespaces and argument list, template arguments kept."""
    name = name.replace("pvf::", "").replace("(anonymous namespace)::", "").removeprefix("void ")
    name = re.sub(r"\(.*\)$", "", name)
    return re.sub(r"\s+", " ", name)


def report(source: Path, arch: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["nvcc", *FLAGS, f"-I{ROOT / 'csrc'}", f"-arch={arch}", "-Xptxas", "-v", "-c", str(source),
               "-o", str(Path(tmp) / "k.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{proc.stderr[-3000:]}")
    rows, current = [], None
    for line in proc.stderr.splitlines():
        m = _COMPILING.search(line)
        if m:
            current = {"file": str(source.relative_to(ROOT)), "mangled": m.group(1), "arch": m.group(2)}
            rows.append(current)
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _USED.search(line)
        if m:
            current.update(registers=int(m.group(1)), smem=int(m.group(2) or 0))
    for row, name in zip(rows, demangle([r["mangled"] for r in rows])):
        row["kernel"] = short(name)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for source in sorted((ROOT / "csrc").glob("*/*.cu")):
        rows += report(source, args.arch)
    lines = [f"| file | kernel | registers | smem B | stack B | spill st/ld B |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['file']).name} | `{r['kernel'][:110]}` | {r.get('registers', '?')} | "
                     f"{r.get('smem', 0)} | {r.get('stack', 0)} | {r.get('spill_stores', 0)}/{r.get('spill_loads', 0)} |")
    spills = [r for r in rows if r.get("spill_stores", 0) or r.get("spill_loads", 0)]
    print("\n".join(lines))
    print(f"\n{len(rows)} kernels for {args.arch}; {len(spills)} spill")
    if args.markdown:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        args.markdown.write_text(
            f"# CUDA kernels: ptxas resource usage for {args.arch}\n\n"
            f"`python tools/ptxas_report.py --arch {args.arch}` ({nvcc}; flags {' '.join(FLAGS)}). "
            f"Every template instantiation is listed (dtypes: float, double, __half, __nv_bfloat16).\n\n"
            + "\n".join(lines) + f"\n\n{len(rows)} kernels; {len(spills)} with spills.\n")
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
