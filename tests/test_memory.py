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


# The cache of freed output blocks ---------------------------------------------------------------------------------

from pyvision_fast import _memory  # noqa: E402


def _poison_free_blocks() -> int:
    """Fills every free cached block with 0xFF bytes (NaN in every float dtype); returns how many there are."""
    n = 0
    with _memory._cache.lock:
        for blocks in _memory._cache.free.values():
            for mapping, _ in blocks:
                mapping[:] = b"\xff" * len(mapping)
                n += 1
    return n


def test_a_dead_output_block_is_reused_and_a_live_one_is_not():
    _memory.empty_cache()
    t = _memory.empty((3, MIN_BYTES // 4), torch.float32)
    assert t._base is None and t.is_contiguous() and t.data_ptr() % (1 << 21) == 0
    ptr, view = t.data_ptr(), t[1]
    del t
    assert _memory.cache_info()["free_blocks"] == 0  # the view keeps the block
    other = _memory.empty((3, MIN_BYTES // 4), torch.float32)
    assert other.data_ptr() != ptr
    del view
    assert _memory.cache_info()["free_blocks"] == 1
    again = _memory.empty((3, MIN_BYTES // 4), torch.float32)
    assert again.data_ptr() == ptr and _memory.cache_info()["free_blocks"] == 0
    small = _memory.empty((10,), torch.float32)  # below MIN_BYTES: a plain allocation
    assert small.numel() == 10
    del other, again
    assert _memory.cache_info()["free_blocks"] == 2
    _memory.empty_cache()
    assert _memory.cache_info()["free_bytes"] == 0


def test_layouts_limit_and_blocks_freed_on_another_thread(monkeypatch):
    import threading

    _memory.empty_cache()
    x = torch.empty(2, 4, 8, 256, 257).transpose(1, 2)  # dense, not contiguous
    y = _memory.empty_like(x)
    assert y.shape == x.shape and y.stride() == x.stride()
    holder = [y]
    thread = threading.Thread(target=holder.clear)
    del y
    thread.start()
    thread.join()
    assert _memory.cache_info()["free_blocks"] == 1
    _memory.empty_cache()
    monkeypatch.setattr(_memory._cache, "limit", MIN_BYTES)  # smaller than one block: nothing is kept
    _memory.empty((MIN_BYTES // 4 + 1,), torch.float32)  # dies at once
    assert _memory.cache_info()["free_blocks"] == 0
    monkeypatch.setattr(_memory._cache, "limit", 0)  # off: plain tensors
    assert _memory.empty((MIN_BYTES,), torch.float32).untyped_storage().resizable()


def test_inplace_ops_and_autograd_on_a_cached_output():
    """A cached output is no view: an in-place ReLU after the op backpropagates as after any other op."""
    from pyvision_fast.reference import mvf as ref

    torch.manual_seed(1)
    x = torch.randn(2, 256, 4, 40, 40, requires_grad=True)
    w = [torch.randn(32, 3, requires_grad=True) for _ in range(3)]
    out = ops.multi_view_fusion(x, *w, fused_channels=32)
    assert out.untyped_storage().nbytes() >= MIN_BYTES and not out.untyped_storage().resizable()
    out.relu_()
    got = torch.autograd.grad(out.sum(), [x, *w])
    want = torch.autograd.grad(ref.multi_view_fusion(x, *w, None, None, False, 32).relu().sum(), [x, *w])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(got, want))


def _out_and_grad(fn, inp, grad):
    """() -> (fn(inp), d fn / d inp against grad), both copied out of the cache's blocks."""
    def run():
        out = fn(inp)
        return out.detach().clone(), torch.autograd.grad(out, inp, grad)[0].clone()
    return run


def _twice_on_poisoned_blocks(run):
    """Runs ``run()`` once (its large buffers return to the cache), poisons the free blocks, runs it again on
    them; returns the second result."""
    _memory.empty_cache()
    run()
    assert _poison_free_blocks() > 0
    hits = _memory.cache_info()["hits"]
    result = run()
    assert _memory.cache_info()["hits"] > hits  # the poisoned blocks were used
    return result


def test_ops_write_every_element_of_a_reused_block():
    import torchvision

    from pyvision_fast.reference import mesh_raster as ref_raster
    from pyvision_fast.reference import mvf as ref_mvf
    from pyvision_fast.reference import scale_space as ref_ss
    from pyvision_fast.reference import stylegan2 as ref_sg2

    g = torch.Generator().manual_seed(2)
    # MVF forward and backward (13 MB in float64)
    x = torch.randn(2, 256, 4, 40, 40, generator=g, dtype=torch.float64, requires_grad=True)
    w = [torch.randn(32, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)

    out, gx = _twice_on_poisoned_blocks(_out_and_grad(lambda t: ops.multi_view_fusion(t, *w, fused_channels=32),
                                                      x, grad))
    want = ref_mvf.multi_view_fusion(x, *w, None, None, False, 32)
    assert torch.allclose(out, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gx, torch.autograd.grad(want, x, grad)[0], rtol=1e-10, atol=1e-10)
    # deformable convolution: the column workspace, the output and the input gradient
    inp = torch.randn(2, 64, 64, 64, generator=g, dtype=torch.float64, requires_grad=True)
    off = torch.randn(2, 18, 64, 64, generator=g, dtype=torch.float64)
    wt = torch.randn(32, 64, 3, 3, generator=g, dtype=torch.float64)

    out, gi = _twice_on_poisoned_blocks(_out_and_grad(lambda t: ops.deform_conv2d(t, off, wt, padding=1), inp,
                                                      torch.ones(2, 32, 64, 64, dtype=torch.float64)))
    want = torchvision.ops.deform_conv2d(inp, off, wt, padding=1)
    assert torch.allclose(out, want, rtol=1e-10, atol=1e-10)
    assert torch.allclose(gi, torch.autograd.grad(want.sum(), inp)[0], rtol=1e-10, atol=1e-10)
    # upfirdn2d (2x upsampling to 8 MB)
    img = torch.randn(2, 8, 256, 256, generator=g)
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    up = _twice_on_poisoned_blocks(lambda: ops.upfirdn2d(img, f, up=2, padding=(2, 1, 2, 1)).clone())
    assert torch.allclose(up, ref_sg2.upfirdn2d(img, f, up=(2, 2), padding=(2, 1, 2, 1)), rtol=1e-5, atol=1e-5)
    # mesh rasterization (4 MB of float32 (u, v, z, id) for a 512 x 512 image)
    verts = torch.tensor([[[-0.9, -0.9, 0.5, 1.0], [0.9, -0.8, 0.5, 1.0], [0.0, 0.9, 0.2, 1.0],
                           [-0.5, 0.5, 0.1, 1.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast = _twice_on_poisoned_blocks(lambda: ops.rasterize_triangles(verts, faces, (512, 512)).clone())
    want = ref_raster.rasterize_triangles(verts, faces, (512, 512))
    assert not rast.isnan().any()
    assert torch.equal(rast[..., 3], want[..., 3])
    assert torch.allclose(rast, want, rtol=1e-4, atol=1e-5)
    # the Gaussian filter bank (4 scales of a 64-channel 64x64 image: 8 MB) and scale attention, both ways
    xs = torch.randn(2, 64, 64, 64, generator=g, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.8, 1.6, 2.4, 3.2], dtype=torch.float64)
    gout = torch.randn(2, 4, 64, 64, 64, generator=g, dtype=torch.float64)

    out, gx = _twice_on_poisoned_blocks(_out_and_grad(lambda t: ops.gaussian_scale_space(t, sigma), xs, gout))
    want = ref_ss.gaussian_scale_space(xs, sigma)
    assert torch.allclose(out, want, rtol=1e-10, atol=1e-10)
    assert torch.allclose(gx, torch.autograd.grad(want, xs, gout)[0], rtol=1e-10, atol=1e-10)
    y = torch.randn(2, 4, 100000, generator=g, dtype=torch.float64, requires_grad=True)
    gain = torch.randn(4, generator=g, dtype=torch.float64)
    gy_out = torch.randn(y.shape, generator=g, dtype=torch.float64)

    out, gy = _twice_on_poisoned_blocks(_out_and_grad(lambda t: ops.scale_attention(t, gain), y, gy_out))
    want = ref_ss.scale_attention(y, gain)
    assert torch.allclose(out, want, rtol=1e-10, atol=1e-10)
    assert torch.allclose(gy, torch.autograd.grad(want, y, gy_out)[0], rtol=1e-10, atol=1e-10)
    # grouping_operation both ways (64 channels of 1024 centres x 32 neighbours: 16 MB in float64)
    feats = torch.randn(2, 64, 2048, generator=g, dtype=torch.float64, requires_grad=True)
    nbr = torch.randint(0, 2048, (2, 1024, 32), generator=g)
    ggrp = torch.randn(2, 64, 1024, 32, generator=g, dtype=torch.float64)

    out, gf = _twice_on_poisoned_blocks(_out_and_grad(lambda t: ops.grouping_operation(t, nbr), feats, ggrp))
    want = torch.gather(feats[:, :, None, :].expand(-1, -1, 1024, -1), 3,
                        nbr[:, None].expand(-1, 64, -1, -1))
    assert torch.equal(out, want)
    assert torch.allclose(gf, torch.autograd.grad(want, feats, ggrp)[0], rtol=1e-12, atol=1e-12)
