"""``stylegan2_texture`` and the StyleGAN2 discriminator: the official architecture (state_dict keys,
parameter counts of named official configurations, outputs of a seeded official network), the fused /
non-fused / second-order paths agreeing, truncation, w_avg tracking, style mixing and noise modes, official
weights in, bad input, and export to ONNX with ONNX Runtime agreeing with eager.

Reference numbers: the parameter counts and the outputs below were obtained once by building NVlabs'
stylegan2-ada-pytorch (``training/networks.py`` at d72cc7d, CPU, its reference ops) with the same arguments;
no test needs that code. The parameter counts also follow from the layer list by hand (e.g. paper256 at 256^2:
mapping 8 x (512 x 512 + 512) = 2,101,248; D = G's blocks mirrored + epilogue). """
from __future__ import annotations

import math

import pytest
import torch

from pyvision_fast.models import create_model
from pyvision_fast.models.stylegan2 import (StyleGAN2Generator, load_official_state_dict, official_kwargs,
                                            to_unit_range)
from pyvision_fast.models.stylegan2_disc import MinibatchStdLayer, StyleGAN2Discriminator

SMALL = dict(z_dim=32, w_dim=24, img_resolution=32, mapping_layers=2, channel_base=512, channel_max=32)
SMALL_D = dict(img_resolution=32, channel_base=512, channel_max=32, mbstd_group_size=2)


def _count(m):
    return sum(p.numel() for p in m.parameters())


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    return StyleGAN2Generator(**{**SMALL, **kw})


def _z(n=4, dim=32, seed=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg, g_count, d_count, map_count", [
    ("paper256", 24_767_458, 24_001_089, 2_101_248),
    ("auto", 23_191_522, 24_001_089, 525_312),
])
def test_parameter_counts_of_official_configurations(cfg, g_count, d_count, map_count):
    g_kw, d_kw, spec = official_kwargs(cfg, 256)
    with torch.device("meta"):
        g, d = StyleGAN2Generator(**g_kw), StyleGAN2Discriminator(**d_kw)
    assert (_count(g), _count(g.mapping), _count(d)) == (g_count, map_count, d_count)
    assert g.num_ws == 14 and len(g.state_dict()) == (144 if cfg == "paper256" else 132)
    assert len(d.state_dict()) == 64
    assert spec["lrate"] == 0.0025 and d_kw["mbstd_group_size"] == (8 if cfg == "paper256" else 4)
    if cfg == "paper256":  # the registry's default is this configuration
        with torch.device("meta"):
            assert _count(create_model("stylegan2_texture")) == g_count


def test_small_and_conditional_parameter_counts():
    g, d = _small(), StyleGAN2Discriminator(**SMALL_D)
    assert (_count(g), _count(g.mapping), _count(d), g.num_ws) == (63_443, 1_392, 72_561, 8)
    gc = StyleGAN2Generator(z_dim=32, c_dim=5, w_dim=24, img_resolution=16, mapping_layers=2,
                            channel_base=256,
                            channel_max=16, conv_clamp=None)
    dc = StyleGAN2Discriminator(c_dim=5, img_resolution=16, channel_base=256, channel_max=16, conv_clamp=None)
    assert (_count(gc), _count(dc)) == (17_326, 18_976)
    img = gc(_z(4), torch.eye(5)[:4])
    assert img.shape == (4, 3, 16, 16) and dc(img, torch.eye(5)[:4]).shape == (4, 1)
    assert "mapping.embed.weight" in dc.state_dict()


def test_official_state_dict_keys():
    g, d = _small(), StyleGAN2Discriminator(**SMALL_D)
    gk, dk = set(g.state_dict()), set(d.state_dict())
    for key in ("mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg", "synthesis.b4.const",
                "synthesis.b4.resample_filter", "synthesis.b4.conv1.affine.weight",
                "synthesis.b4.conv1.affine.bias", "synthesis.b4.conv1.noise_const",
                "synthesis.b4.conv1.noise_strength", "synthesis.b4.torgb.weight", "synthesis.b8.conv0.weight",
                "synthesis.b8.conv0.resample_filter", "synthesis.b32.torgb.affine.weight",
                "synthesis.b32.conv1.bias"):
        assert key in gk, key
    for key in ("b32.fromrgb.weight", "b32.conv0.weight", "b32.conv1.bias", "b32.skip.weight",
                "b16.skip.weight",
                "b8.conv1.resample_filter", "b4.conv.weight", "b4.fc.weight", "b4.out.weight", "b4.out.bias"):
        assert key in dk, key
    assert "b16.fromrgb.weight" not in dk and "b32.skip.bias" not in dk
    assert tuple(g.state_dict()["synthesis.b4.const"].shape) == (32, 4, 4)


def test_seeded_network_equals_the_official_one():
    """torch.manual_seed(0) then the official constructors give these outputs (recorded, see the module
    docstring): the same parameter creation order, initialisation and forward computation."""
    g = _small(0).eval()
    torch.manual_seed(0)
    d = StyleGAN2Discriminator(**SMALL_D)
    z = _z(4)
    with torch.no_grad():
        img = g(z, noise_mode="const")
        img_psi = g(z, noise_mode="const", truncation_psi=0.5)
        logits = d(img)
    assert img.dtype == torch.float32 and img.shape == (4, 3, 32, 32)
    assert img.double().sum().item() == pytest.approx(-584.9580754982308, rel=1e-5)
    assert img.abs().mean().item() == pytest.approx(0.8518163561820984, rel=1e-5)
    torch.testing.assert_close(img[0, :, 5, 7], torch.tensor([-2.006042003631592, 3.2906439304351807,
                                                              -2.159212350845337]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(img[3, :, 31, 0], torch.tensor([-0.11335979402065277, 0.16855844855308533,
                                                               0.2170434594154358]), rtol=1e-5, atol=1e-5)
    assert img_psi.double().sum().item() == pytest.approx(-977.6327120032511, rel=1e-5)
    torch.testing.assert_close(logits.flatten(), torch.tensor([-0.9394314289093018, -0.1489202231168747,
                                                               -0.5672887563705444, -1.0834400653839111]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["skip", "resnet", "orig"])
def test_fused_and_nonfused_paths_agree(arch):
    g = _small(3, architecture=arch).eval()
    d = StyleGAN2Discriminator(**{**SMALL_D, "architecture": {"skip": "resnet"}.get(arch, arch)})
    for p in g.parameters():  # noise strengths and biases away from their zero initialisation
        p.data += 0.05 * torch.randn_like(p)
    ws = g.mapping(_z(2), None)
    with torch.no_grad():
        fused = g.synthesis(ws, noise_mode="const")
        plain = g.synthesis(ws, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(plain, fused, rtol=1e-4, atol=1e-4)
    assert d(fused).shape == (2, 1)


def test_second_order_gradients_through_the_fused_ops():
    d = StyleGAN2Discriminator(**{**SMALL_D, "img_resolution": 16})
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    g.square().sum().backward()
    assert d.b16.conv0.weight.grad is not None and torch.isfinite(d.b16.conv0.weight.grad).all()


def test_truncation_w_avg_and_style_mixing():
    g = _small(1)
    z = _z(3)
    g.train()
    w = g.mapping(z, None, skip_w_avg_update=True)[:, 0]
    assert torch.count_nonzero(g.mapping.w_avg) == 0
    g.mapping(z, None)
    torch.testing.assert_close(g.mapping.w_avg, w.mean(0) * (1 - 0.995))   # lerp(mean, w_avg, beta)
    g.eval()
    ws = g.mapping(z, None, truncation_psi=0.0)
    torch.testing.assert_close(ws, g.mapping.w_avg.expand_as(ws))
    ws1, wsc = g.mapping(z, None), g.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(wsc[:, :3], g.mapping.w_avg.lerp(ws1[:, :3], 0.5))
    torch.testing.assert_close(wsc[:, 3:], ws1[:, 3:])
    # style mixing: ws from cutoff on come from the second latent
    z2 = _z(3, seed=5)
    _, ws_mix = g(z, mix_z=z2, mix_cutoff=5, return_ws=True, noise_mode="const")
    torch.testing.assert_close(ws_mix[:, :5], ws1[:, :5])
    torch.testing.assert_close(ws_mix[:, 5:], g.mapping(z2, None)[:, 5:])
    assert torch.equal(g(z, mix_z=z2, mix_cutoff=g.num_ws, noise_mode="const"), g(z, noise_mode="const"))


def test_noise_modes_and_unit_range():
    g = _small(2).eval()
    g.synthesis.b8.conv1.noise_strength.data.fill_(0.5)
    z = _z(2)
    with torch.no_grad():
        a, b = g(z, noise_mode="const"), g(z, noise_mode="const")
        r1, r2 = g(z), g(z)
        n = g(z, noise_mode="none")
    assert torch.equal(a, b) and not torch.equal(r1, r2) and not torch.equal(a, n)
    u = to_unit_range(a)
    assert u.min() >= 0 and u.max() <= 1
    torch.testing.assert_close(to_unit_range(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_official_weights_load(tmp_path):
    src, dst = _small(0), _small(7)
    d_src = StyleGAN2Discriminator(**SMALL_D)
    path = tmp_path / "network.pt"
    torch.save({"G": src.state_dict(), "G_ema": src.state_dict(), "D": d_src.state_dict()}, path)
    load_official_state_dict(dst, path)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    d = load_official_state_dict(StyleGAN2Discriminator(**SMALL_D), path, which="D")
    assert torch.equal(d.b4.out.weight, d_src.b4.out.weight)
    # the registry path: a flat G_ema.-prefixed safetensors file through create_model(checkpoint_path=)
    from safetensors.torch import save_file

    flat = tmp_path / "g.safetensors"
    save_file({f"G_ema.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(flat))
    g = create_model("stylegan2_texture", checkpoint_path=flat, **{k: v for k, v in SMALL.items()})
    assert torch.equal(g.synthesis.b4.const, src.synthesis.b4.const)
    with pytest.raises(ValueError, match="dnnlib"):
        load_official_state_dict(dst, tmp_path / "network-snapshot.pkl")
    with pytest.raises(ValueError, match="do not fit"):
        load_official_state_dict(_small(0, img_resolution=16), path)
    with pytest.raises(FileNotFoundError):
        load_official_state_dict(dst, tmp_path / "missing.pt")


def test_bad_inputs_raise_clear_errors():
    g = _small(0)
    d = StyleGAN2Discriminator(**SMALL_D)
    cases = [
        (lambda: g(torch.randn(2, 31)), ValueError, "z"),
        (lambda: g(torch.randn(2, 32, 1)), ValueError, "z"),
        (lambda: g(torch.ones(2, 32, dtype=torch.long)), TypeError, "z"),
        (lambda: g("z"), TypeError, "z"),
        (lambda: g.synthesis(torch.randn(2, 7, 24)), ValueError, "ws"),
        (lambda: g.synthesis(torch.randn(2, 8, 24), noise_mode="fixed"), ValueError, "noise_mode"),
        (lambda: g(torch.randn(2, 32), truncation_psi="0.5"), TypeError, "truncation_psi"),
        (lambda: g(torch.randn(2, 32), mix_z=torch.randn(2, 32), mix_cutoff=99), ValueError, "mix_cutoff"),
        (lambda: d(torch.randn(2, 3, 16, 16)), ValueError, "img"),
        (lambda: d(torch.randn(3, 3, 32, 32)), ValueError, "group size"),
        (lambda: StyleGAN2Generator(img_resolution=48), ValueError, "power of two"),
        (lambda: StyleGAN2Generator(z_dim=2.5), TypeError, "z_dim"),
        (lambda: StyleGAN2Generator(architecture="deep"), ValueError, "architecture"),
        (lambda: StyleGAN2Discriminator(img_resolution=4), ValueError, "img_resolution"),
        (lambda: StyleGAN2Generator(c_dim=3, **{**SMALL, "channel_base": 512})(torch.randn(2, 32)),
         ValueError, "c"),
        (lambda: official_kwargs("paper2048", 256), ValueError, "cfg"),
        (lambda: g.export_module(input="c"), ValueError, "input"),
    ]
    for fn, error, word in cases:
        with pytest.raises(error, match=word):
            fn()
    assert MinibatchStdLayer(None)(torch.randn(3, 4, 2, 2)).shape == (3, 5, 2, 2)


@pytest.mark.parametrize("input_kind", ["z", "ws"])
def test_export_onnx_matches_eager(tmp_path, input_kind):
    """z (or ws) -> texture with noise "const": ONNX Runtime within 1e-4 of eager, a dynamic batch."""
    pytest.importorskip("onnxruntime")
    from pyvision_fast.export import to_onnx
    from pyvision_fast.export.onnx_export import run_onnxruntime

    g = _small(0, img_resolution=8)
    g.mapping.w_avg.normal_()
    for p in g.parameters():
        p.data += 0.05 * torch.randn_like(p)
    module = g.export_module(truncation_psi=0.7, input=input_kind)
    shape = (2, *module.default_input_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    report = to_onnx(module, (x,), tmp_path / "g.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4, report
    assert not report.tensorrt_unsupported, report.tensorrt_unsupported
    x3 = torch.randn(3, *shape[1:])
    (out,) = run_onnxruntime(tmp_path / "g.onnx", [x3])
    with torch.no_grad():
        want = g(x3, truncation_psi=0.7, noise_mode="const") if input_kind == "z" else \
            g.synthesis(x3, noise_mode="const")
    assert out.shape == (3, 3, 8, 8)
    assert float(abs(torch.from_numpy(out) - want).max()) < 1e-4


def test_pvf_export_registry_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from pyvision_fast.export import export_model

    args = {**SMALL, "img_resolution": 8, "channel_base": 64, "channel_max": 16}
    report = export_model("stylegan2_texture", tmp_path / "t.onnx", model_args=args)
    assert report.max_abs_diff < 1e-4 and math.isfinite(report.max_abs_diff)
