"""face3d.latents: GAN inversion of UV textures into a StyleGAN2 generator's W+ space, and loading the
generator of a checkpoint."""
import pytest
import torch
from safetensors.torch import save_file

from pyvision_fast.face3d.latents import invert_textures, load_texture_generator, synthesize_textures
from pyvision_fast.models.stylegan2 import StyleGAN2Generator

TINY = dict(z_dim=16, w_dim=16, img_resolution=16, channel_base=256, channel_max=32, mapping_layers=2)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    G = StyleGAN2Generator(**TINY).eval()
    with torch.no_grad():
        G.mapping.w_avg.copy_(G.mapping(torch.randn(512, 16))[:, 0].mean(0))
    return G


def _targets(G, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ws = G.mapping(torch.randn(n, G.z_dim, generator=gen))
        return ws, synthesize_textures(G, ws)


def test_inversion_reproduces_generated_textures(generator):
    _, target = _targets(generator, 3)
    _, start = invert_textures(generator, target, steps=0, return_loss=True)
    ws, loss = invert_textures(generator, target, steps=100, return_loss=True)
    assert ws.shape == (3, generator.num_ws, generator.w_dim)
    assert (loss < 0.1 * start).all(), (start, loss)
    err = (synthesize_textures(generator, ws) - target).abs().mean()
    assert err < 0.5 * (synthesize_textures(generator, generator.mapping.w_avg.expand(3, generator.num_ws, 16))
                 - target).abs().mean()


def test_invisible_texels_have_no_effect_at_any_scale(generator):
    _, target = _targets(generator, 2, seed=3)
    vis = torch.zeros(2, 1, 16, 16)
    vis[:, :, 2:13, 3:11] = 1.0
    vis[:, :, 5, 12] = 0.5
    garbage = target.clone()
    garbage[(vis == 0).expand_as(garbage)] = 7.0
    garbage[0, 0, 0, 0] = float("nan")                    # NaN where nothing is visible is ignored too
    a = invert_textures(generator, target, vis, steps=5)
    b = invert_textures(generator, garbage, vis, steps=5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # ... but a visible change changes the result
    moved = target.clone()
    moved[:, :, 6:9, 5:8] += 0.3
    c = invert_textures(generator, moved, vis, steps=5)
    assert (c - a).abs().max() > 1e-4


def test_textures_of_another_size_are_resized(generator):
    _, target = _targets(generator, 1, seed=4)
    big = torch.nn.functional.interpolate(target, size=(32, 32), mode="nearest")
    torch.testing.assert_close(invert_textures(generator, big, steps=3), invert_textures(generator, target, steps=3),
                               rtol=1e-5, atol=1e-5)


def test_sequence_term_smooths_latents_over_frames(generator):
    gen = torch.Generator().manual_seed(5)
    _, base = _targets(generator, 1, seed=6)
    frames = (base + 0.15 * torch.randn(6, 3, 16, 16, generator=gen)).clamp(0, 1)

    def jitter(ws):
        return (ws[1:] - ws[:-1]).square().mean()

    free = invert_textures(generator, frames, steps=40)
    smooth = invert_textures(generator, frames, steps=40, sequence=True, smooth_weight=50.0)
    assert jitter(smooth) < 0.5 * jitter(free)


def test_generator_is_left_unchanged(generator):
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    generator.synthesis.b4.conv1.weight.requires_grad_(True)
    generator.mapping.fc0.weight.requires_grad_(False)
    _, target = _targets(generator, 1)
    invert_textures(generator, target, steps=3)
    for k, v in generator.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert generator.synthesis.b4.conv1.weight.requires_grad and not generator.mapping.fc0.weight.requires_grad
    generator.mapping.fc0.weight.requires_grad_(True)
    assert all(p.grad is None for p in generator.parameters())


def test_init_is_used(generator):
    ws_true, target = _targets(generator, 2, seed=8)
    ws, loss = invert_textures(generator, target, steps=0, init=ws_true, return_loss=True)
    assert torch.equal(ws, ws_true) and float(loss.max()) < 1e-10


@pytest.mark.parametrize("kwargs, match", [
    (dict(textures=torch.zeros(2, 4, 16, 16)), "textures"),
    (dict(textures=torch.zeros(3, 16, 16)), "textures"),
    (dict(textures=torch.zeros(2, 3, 16, 16, dtype=torch.int64)), "textures"),
    (dict(textures=torch.full((1, 3, 16, 16), float("inf"))), "NaN or Inf"),
    (dict(visibility=torch.ones(1, 1, 16, 16)), "visibility"),
    (dict(visibility=torch.full((2, 1, 16, 16), 2.0)), "visibility"),
    (dict(init=torch.zeros(5, 16)), "init"),
    (dict(init=torch.zeros(6, 15)), "init"),
    (dict(steps=-1), "steps"),
    (dict(lr=0.0), "lr"),
    (dict(scales=(3,)), "scales"),
])
def test_bad_inputs(generator, kwargs, match):
    args = dict(textures=torch.zeros(2, 3, 16, 16))
    args.update(kwargs)
    textures = args.pop("textures")
    with pytest.raises((ValueError, TypeError), match=match):
        invert_textures(generator, textures, **args)


def test_load_texture_generator(tmp_path, generator):
    path = tmp_path / "g.safetensors"
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(path))
    G = load_texture_generator(path, model_args={k: v for k, v in TINY.items()})
    for k, v in generator.state_dict().items():
        assert torch.equal(G.state_dict()[k], v)
    assert not G.training
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_texture_generator(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        load_texture_generator(path, model_args=dict(TINY, w_dim=8, z_dim=8))


def test_previous_ties_the_first_frame(generator):
    ws_true, target = _targets(generator, 2, seed=9)
    anchor = ws_true[0] + 0.5
    free = invert_textures(generator, target[1:], steps=20, sequence=True)
    tied = invert_textures(generator, target[1:], steps=20, sequence=True, previous=anchor, smooth_weight=20.0)
    assert (tied[0] - anchor).square().mean() < 0.5 * (free[0] - anchor).square().mean()
    with pytest.raises(ValueError, match="previous"):
        invert_textures(generator, target, steps=1, sequence=True, previous=anchor[0])


def test_invert_video_recovers_the_texture_of_rendered_frames(generator):
    """Frames rendered with a generated texture (one latent for the video): inverting them chunk by chunk
    (unwrap + joint inversion, the second chunk warm-started and tied to the first) brings the generated
    textures much closer to the true one than the start (w_avg), and the latents of consecutive frames stay
    close."""
    from pyvision_fast.face3d.latents import invert_video
    from pyvision_fast.face3d.synthetic import synthetic_talking_sequence
    from pyvision_fast.models import create_model

    face = create_model("bfm", basis="synthetic", synthetic_rows=24, image_size=48).eval()
    coeffs = synthetic_talking_sequence(face_basis(), 4, seed=2)
    ws_true, texture = _targets(generator, 1, seed=11)
    with torch.no_grad():
        r = face.render(coeffs, texture=texture.expand(4, -1, -1, -1).contiguous())
    frames = r["image"] * r["mask"] + 0.5 * (1 - r["mask"])
    counts = []
    ws = invert_video(generator, face, [(coeffs[:2], frames[:2]), (coeffs[2:], frames[2:])], steps=80,
                      warm_steps=40, on_chunk=counts.append)
    assert ws.shape == (4, generator.num_ws, generator.w_dim) and counts == [2, 2]
    with torch.no_grad():
        start = synthesize_textures(generator, generator.mapping.w_avg.expand(1, generator.num_ws, 16))
        got = synthesize_textures(generator, ws)
    before = (start - texture).abs().mean()
    after = (got - texture).abs().mean((1, 2, 3))
    assert (after < 0.4 * before).all(), (before, after)           # measured: 0.265 -> 0.068
    assert (ws[1:] - ws[:-1]).abs().mean() < 0.5 * (ws - generator.mapping.w_avg).abs().mean()


def face_basis():
    from pyvision_fast.face3d.synthetic import synthetic_face_basis

    return synthetic_face_basis(24)
