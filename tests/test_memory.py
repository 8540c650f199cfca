"""pyvision_fast._memory.advise_huge_pages: large CPU buffers of the ops take one page fault per 2 MiB instead of
per 4 KiB on first touch (where transparent huge pages are available), change no value, and can be turned off."""
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyvision_fast import ops
from pyvision_fast._memory import MIN_BYTES, advise_huge_pages

_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
needs_thp = pytest.mark.skipif(not sys.platform.startswith("linux") or not _THP.exists()
                               or "[never]" in _THP.read_text(), reason="needs Linux transparent huge pages")

_FAULTS = """
import resource, sys, torch
from pyvision_fast._memory import advise_huge_pages
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    t = advise_huge_pages(torch.empty(32 << 18))  # 32 MiB of float32, a fresh mapping
    t.fill_(1.0)
    del t
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def _faults_per_fill(env_extra: dict) -> float:
    import os

    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                         env={**os.environ, **env_extra})
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@needs_thp
def test_large_buffers_fault_in_huge_pages():
    small_pages = (32 << 20) // 4096   # 8192 faults for 32 MiB in 4 KiB pages
    advised = _faults_per_fill({"THP_MEM_ALLOC_ENABLE": "0"})
    plain = _faults_per_fill({"PVF_HUGE_PAGES": "0", "THP_MEM_ALLOC_ENABLE": "0"})
    assert plain > 0.9 * small_pages
    assert advised < 0.25 * small_pages


def test_advice_returns_the_tensor_and_leaves_values_alone():
    t = torch.empty(MIN_BYTES // 4 + 123)
    assert advise_huge_pages(t) is t
    t.fill_(2.5)
    assert bool((t == 2.5).all())
    small, meta = torch.ones(10), torch.empty(1 << 22, device="meta")
    assert advise_huge_pages(small) is small and advise_huge_pages(meta) is meta
    # a view in the middle of a storage: the advice covers the storage, the values stay
    base = torch.arange(float(MIN_BYTES // 2))
    view = base[1000:-1000]
    advise_huge_pages(view)
    assert torch.equal(base, torch.arange(float(MIN_BYTES // 2)))


def test_mvf_on_advised_buffers_equals_the_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 256, 4, 40, 40, dtype=torch.float64, requires_grad=True)  # 13 MB: advised
    w = [torch.randn(32, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    out = ops.multi_view_fusion(x, *w, fused_channels=32)
    from pyvision_fast.reference import mvf as ref

    want = ref.multi_view_fusion(x, *w, None, None, False, 32)
    assert torch.allclose(out, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *w], g)
    exp = torch.autograd.grad(want, [x, *w], g)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-10) for a, b in zip(got, exp))
