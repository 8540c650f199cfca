"""vqgan_f8_16384: taming-transformers' VQModel layout (keys and shapes written out here from taming's architecture,
not read from our module), parameter count, quantizer, reconstruction range, checkpoint loading, freezing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyvision_fast.models import count_parameters, create_model, list_models
from pyvision_fast.models.vqgan import (AttnBlock, Downsample, Upsample, convert_taming_checkpoint, load_vqgan,
                                        read_taming_checkpoint)

# The config of taming's configs for vqgan_openimages_f8_16384 (shared/papers.md section 6).
FULL = dict(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(32,), z_channels=4, resolution=256,
            in_channels=3, out_ch=3, embed_dim=4, n_embed=16384)
# Reduced for speed: same structure (attention at the coarsest level, four levels), 32 channels, one res block per
# level (two in the decoder), 32x32 images.
TINY = dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(4,), z_channels=4, resolution=32,
            embed_dim=4, n_embed=64)
# Parameters of the real model: encoder 27,397,764 + decoder 40,253,955 + codebook 65,536 + quant convs 2 x 20.
FULL_PARAMS = 67_717_295


def taming_layout(ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, resolution, in_channels=3, out_ch=3,
                  embed_dim=4, n_embed=16384) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape of taming's VQModel (Encoder/Decoder of diffusionmodules/model.py without time
    embedding, VectorQuantizer2, 1x1 quant convs), from the published architecture."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def gn(name, c):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    def resblock(name, cin, cout):
        gn(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        gn(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        gn(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    widths = [ch * m for m in ch_mult]
    levels = len(ch_mult)
    # encoder: resolution halves after every level but the last
    conv("encoder.conv_in", in_channels, ch, 3)
    cin = ch
    for i in range(levels):
        res_i = resolution // 2 ** i
        for j in range(num_res_blocks):
            resblock(f"encoder.down.{i}.block.{j}", cin, widths[i])
            cin = widths[i]
            if res_i in attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", cin)
        if i < levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    for prefix in ("encoder", "decoder"):
        resblock(f"{prefix}.mid.block_1", widths[-1], widths[-1])
        attn(f"{prefix}.mid.attn_1", widths[-1])
        resblock(f"{prefix}.mid.block_2", widths[-1], widths[-1])
    gn("encoder.norm_out", widths[-1])
    conv("encoder.conv_out", widths[-1], z_channels, 3)
    # decoder: up[i] works at resolution / 2**i with widths[i]; it is entered from the level below (i + 1)
    conv("decoder.conv_in", z_channels, widths[-1], 3)
    for i in range(levels):
        cin = widths[i + 1] if i < levels - 1 else widths[-1]
        res_i = resolution // 2 ** i
        for j in range(num_res_blocks + 1):
            resblock(f"decoder.up.{i}.block.{j}", cin, widths[i])
            cin = widths[i]
            if res_i in attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", cin)
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", widths[i], widths[i], 3)
    gn("decoder.norm_out", widths[0])
    conv("decoder.conv_out", widths[0], out_ch, 3)
    shapes["quantize.embedding.weight"] = (n_embed, embed_dim)
    conv("quant_conv", z_channels, embed_dim, 1)
    conv("post_quant_conv", embed_dim, z_channels, 1)
    return shapes


def _numel(shapes):
    total = 0
    for s in shapes.values():
        n = 1
        for d in s:
            n *= d
        total += n
    return total


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("vqgan_f8_16384", **TINY)
    # a spread-out codebook so that the random encoder's outputs select many different codes
    model.quantize.embedding.weight.copy_(torch.randn(TINY["n_embed"], TINY["embed_dim"]))
    return model


def test_registered():
    assert "vqgan_f8_16384" in list_models("vqgan*")


def test_full_layout_and_parameter_count():
    model = create_model("vqgan_f8_16384")
    expected = taming_layout(**FULL)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:5], sorted(set(expected) - set(got))[:5])
    assert got == expected
    assert _numel(expected) == FULL_PARAMS
    assert count_parameters(model) == FULL_PARAMS                     # about 67.7M
    assert "encoder.down.3.attn.1.q.weight" in got and "decoder.up.3.attn.2.proj_out.weight" in got
    assert "encoder.down.2.attn.0.q.weight" not in got                  # attention only at 32x32
    assert got["quantize.embedding.weight"] == (16384, 4)


def test_tiny_layout(tiny):
    got = {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    assert got == taming_layout(**TINY)


def test_frozen(tiny):
    full = create_model("vqgan_f8_16384", **TINY)
    assert not full.training
    assert count_parameters(full, trainable_only=True) == 0
    assert all(not m.training for m in full.modules())


def test_encode_indices_are_nearest_codebook_rows(tiny):
    x = torch.rand(2, 3, 32, 16)
    z_q, idx = tiny.encode(x)
    assert z_q.shape == (2, 4, 4, 2) and idx.shape == (2, 4, 2) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < TINY["n_embed"]
    codebook = tiny.quantize.embedding.weight
    assert torch.equal(z_q.permute(0, 2, 3, 1), codebook[idx])          # every vector is exactly a codebook row
    assert idx.unique().numel() > 1
    # the chosen row is the nearest in L2 to the pre-quantisation vector
    with torch.no_grad():
        z = tiny.quant_conv(tiny.encoder(2 * x - 1)).permute(0, 2, 3, 1).reshape(-1, 4)
    d = torch.cdist(z.double(), codebook.double())
    assert torch.allclose(d.gather(1, idx.reshape(-1, 1)).squeeze(1), d.min(1).values, atol=1e-6)


def test_reconstruction_in_unit_range(tiny):
    x = torch.rand(2, 3, 32, 32)
    y = tiny(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    z_q, idx = tiny.encode(x)
    assert torch.equal(tiny.decode(z_q), y)
    assert torch.allclose(tiny.decode_code(idx), y, atol=1e-6)


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="GroupNorm"):
        create_model("vqgan_f8_16384", ch=48)


def test_attention_block_is_taming_single_head():
    torch.manual_seed(1)
    block = AttnBlock(32)
    x = torch.randn(2, 32, 3, 5)
    h = block.norm(x)
    q, k, v = (m(h).flatten(2) for m in (block.q, block.k, block.v))   # (B, C, HW)
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 32 ** 0.5, dim=-1)
    ref = x + block.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(2, 32, 3, 5))
    assert torch.allclose(block(x), ref, atol=1e-5)


def test_downsample_pads_right_bottom_and_upsample_is_nearest():
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 1, 1] = 1.0                             # the centre tap
        down.conv.bias.zero_()
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    # pad (0, 1, 0, 1) then stride 2: the centre tap sits on odd rows/columns (symmetric padding 1 would give even)
    assert torch.equal(down(x), x[:, :, 1::2, 1::2])
    up = Upsample(1)
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.weight[0, 0, 1, 1] = 1.0
        up.conv.bias.zero_()
    assert torch.equal(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_strict_load_of_lightning_state_dict(tiny, tmp_path):
    torch.manual_seed(2)
    src = create_model("vqgan_f8_16384", **TINY)
    state = {k: torch.randn_like(v) * 0.05 for k, v in src.state_dict().items()}
    state["quantize.embedding.weight"] = torch.randn(TINY["n_embed"], 4)
    src.load_state_dict(state)
    ckpt = {"state_dict": {**state, "loss.discriminator.main.0.weight": torch.zeros(8, 3, 4, 4),
                           "loss.perceptual_loss.net.slice1.0.weight": torch.zeros(1)},
            "epoch": 7, "global_step": 1000}
    path = tmp_path / "vqgan_openimages_f8_16384.ckpt"
    torch.save(ckpt, path)
    model = create_model("vqgan_f8_16384", checkpoint_path=path, **TINY)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(x), src(x))
    assert count_parameters(model, trainable_only=True) == 0 and not model.training
    # a key of another layout is refused
    bad = dict(ckpt["state_dict"])
    bad["encoder.down.0.block.0.temb_proj.weight"] = torch.zeros(1)
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="temb_proj"):
        create_model("vqgan_f8_16384", checkpoint_path=tmp_path / "bad.ckpt", **TINY)


class FakeModelCheckpoint:
    """Stands in for pytorch_lightning's ModelCheckpoint, which real taming checkpoints pickle in 'callbacks'."""

    def __init__(self, monitor):
        self.monitor = monitor


class FakeAttributeDict(dict):
    """Stands in for Lightning's AttributeDict hyper-parameter container (a dict subclass)."""


def test_lightning_checkpoint_with_foreign_globals(tmp_path):
    torch.manual_seed(3)
    src = create_model("vqgan_f8_16384", **TINY)
    state = {k: torch.randn_like(v) * 0.05 for k, v in src.state_dict().items()}
    src.load_state_dict(state)
    path = tmp_path / "vqgan_openimages_f8_16384.ckpt"
    torch.save({"state_dict": {**state, "loss.logvar": torch.zeros(())},
                "callbacks": {"ckpt": FakeModelCheckpoint("val/rec_loss")},
                "hyper_parameters": FakeAttributeDict(n_embed=64)}, path)
    # torch.load(weights_only=True) refuses these globals; the taming reader replaces them by inert stand-ins
    assert set(read_taming_checkpoint(path)) == set(state)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(load_vqgan(path, **TINY)(x), src(x))
    converted = convert_taming_checkpoint(path, tmp_path / "vqgan.safetensors")
    assert torch.equal(create_model("vqgan_f8_16384", checkpoint_path=converted, **TINY)(x), src(x))
    with pytest.raises(FileNotFoundError, match="vqgan_openimages_f8_16384.ckpt"):
        load_vqgan(tmp_path / "missing.ckpt", **TINY)


def test_pretrained_without_path_names_the_checkpoint():
    with pytest.raises(FileNotFoundError, match="vqgan_openimages_f8_16384.ckpt"):
        create_model("vqgan_f8_16384", pretrained=True, **TINY)
