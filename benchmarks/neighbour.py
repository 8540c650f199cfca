"""``python -m benchmarks --neighbour``: each CPU case timed again beside a busy neighbour.

Users run beside other jobs (a second training script, data-loader workers, a shared machine). The neighbour
here is another PyTorch process multiplying 1024 x 1024 float32 matrices in a loop with torch's default thread
count, started after the family's idle timings and stopped before the next family. Beside it, ours and every
implementation a goal names are timed again, side by side, as rows ``<name> [beside a neighbour]``. For each
speed-up goal the verdict asks that ours keep at least ``MIN_RETAINED`` (0.6) of its idle speed-up over the same
implementation, both measured beside the same neighbour: ``(other_nb / ours_nb) / (other_idle / ours_idle)``.
"""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Optional

from .harness import Case, Impl, Result, run_case
from .tuned import NATIVE_SUFFIX, TUNED_SUFFIX

NEIGHBOUR_SUFFIX = " [beside a neighbour]"
MIN_RETAINED = 0.6
# a plain PyTorch job: a 1024^2 float32 matmul loop with torch's default thread count (all cores)
_NEIGHBOUR_CODE = ("import torch\n"
                   "a = torch.randn(1024, 1024)\n"
                   "print('ready', flush=True)\n"
                   "while True:\n"
                   "    a = torch.mm(a, a).clamp_(-1, 1)\n")


class Neighbour:
    """The busy neighbour process; a context manager that starts it (waiting until its loop runs) and kills
    it on exit, whatever happens inside."""

    def __init__(self, warm_s: float = 0.5):
        self.warm_s = warm_s
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Neighbour":
        self.proc = subprocess.Popen([sys.executable, "-c", _NEIGHBOUR_CODE], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.__exit__(None, None, None)
            raise RuntimeError("the neighbour process did not start")
        time.sleep(self.warm_s)  # its loop running at full speed before the timings start
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _goal_targets(case: Case) -> list[str]:
    return [against for against, _ in case.all_goals() if not against.endswith((TUNED_SUFFIX, NATIVE_SUFFIX))]


def time_beside_neighbour(rows: list[tuple[Case, list[Result]]], device: str, ceilings: dict,
                          budget: float) -> None:
    """Times ours and each goal's implementation of every case again beside a ``Neighbour`` and appends them
    as ``[beside a neighbour]`` rows (kind "neighbour"); ``retention_verdicts`` judges them."""
    plans = []
    for case, results in rows:
        ours = next((i for i in case.impls if i.kind == "ours"), None)
        targets = [i for i in case.impls if i.name in _goal_targets(case)]
        if ours is not None:
            plans.append((case, results, [ours] + targets))
    if not plans:
        return
    with Neighbour():
        for case, results, impls in plans:
            print(f"running {case.family}/{case.name} beside a neighbour ...", flush=True)
            timed = Case(case.family, case.name, case.params,
                         [Impl(i.name + NEIGHBOUR_SUFFIX, i.fn, "neighbour") for i in impls],
                         flops=case.flops, bytes=case.bytes, bound=case.bound)
            results += run_case(timed, device, ceilings, budget)


def retention_verdicts(case: Case, results: list[Result]) -> list[dict]:
    """For each speed-up goal of ``case`` with neighbour rows: the share of ours' idle speed-up over the goal's
    implementation that it keeps beside the neighbour, and whether that is at least ``MIN_RETAINED``."""
    by_name = {r.impl: r for r in results if r.error is None}
    ours = next((r for r in results if r.kind == "ours" and r.error is None), None)
    out = []
    if ours is None or ours.impl + NEIGHBOUR_SUFFIX not in by_name:
        return out
    ours_nb = by_name[ours.impl + NEIGHBOUR_SUFFIX]
    for against in _goal_targets(case):
        other, other_nb = by_name.get(against), by_name.get(against + NEIGHBOUR_SUFFIX)
        if other is None or other_nb is None:
            continue
        idle = other.median_ms / ours.median_ms
        beside = other_nb.median_ms / ours_nb.median_ms
        share = beside / idle
        out.append({"against": against, "idle_speedup": idle, "neighbour_speedup": beside, "retained": share,
                    "min_retained": MIN_RETAINED, "met": share >= MIN_RETAINED})
    return out


def retention_lines(case: Case, results: list[Result], pad: str, quick: bool) -> list[str]:
    lines = []
    for v in retention_verdicts(case, results):
        verdict = ("met" if v["met"] else "NOT met") + (", indicative" if quick else "")
        lines.append(f"{pad}goal: beside a neighbour keep >= {v['min_retained']:g} of the idle speed-up over "
                     f"{v['against']}: {v['neighbour_speedup']:.2f}x / {v['idle_speedup']:.2f}x = "
                     f"{v['retained']:.2f} ({verdict})")
    return lines
