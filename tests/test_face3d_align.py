"""face3d.align: five-point alignment of video frames to the model's mean face, cropping, and pasting rendered
faces back.

How the expected values are made without the code under test:

* transforms: points built as an exact similarity ``p = s R q + t`` of a template with known s, R, t; the
  expected frame -> crop matrix is its inverse written out by hand; the scale-only least-squares fit is
  checked against ``numpy.linalg.lstsq``;
* cropping: a frame holding a rendered face scaled 2x by pixel repetition (``repeat_interleave``) and shifted
  by whole pixels, so each crop pixel centre falls between two equal frame pixels and the crop must return the
  render exactly; and frames that are linear ramps in x and y, which bilinear sampling reproduces exactly, so
  the value of each crop pixel is the ramp at the hand-mapped position;
* pasting: the same render upscaled 2x by ``F.interpolate(bilinear, align_corners=False)`` (the pixel-centre
  convention's 2x resampling) where the feathered mask is 1; a whole-pixel shift at scale 1 for an exact
  round trip.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyvision_fast.face3d.align import (alignment_template, crop_faces, estimate_alignment, five_points,
                                        invert_alignment, paste_faces, smooth_alignment, transform_points)
from pyvision_fast.models import create_model

D = torch.float64
TEMPLATE = torch.tensor([[20.0, 24.0], [44.0, 24.5], [32.0, 34.0], [23.0, 46.0], [41.0, 45.5]], dtype=D)


def rot(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=D)


def similarity_points(q, scale, theta, t):
    """frame points p = scale R(theta) q + t, and the hand-written inverse (frame -> crop) matrix."""
    R = rot(theta)
    t = torch.tensor(t, dtype=D)
    p = scale * q @ R.T + t
    M = R.T / scale
    return p, torch.cat([M, -(M @ t)[:, None]], 1)


@pytest.fixture(scope="module")
def bfm():
    return create_model("bfm", basis="synthetic", image_size=64)


@pytest.fixture(scope="module")
def rendered(bfm):
    z = torch.zeros(1, 257, dtype=D)
    with torch.no_grad():
        out = bfm.render(z)
        lm = bfm.landmarks(z)
    return out["image"], out["mask"], lm


def background(H, W):
    yy, xx = torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D), indexing="ij")
    return torch.stack([0.3 + 0.2 * xx / W, 0.5 + 0.1 * torch.sin(yy / 7), 0.2 + 0.3 * yy / H])[None]


def embed(bg, img, mask, offset):
    """bg with img (premultiplied by mask, as a render is) composited at the whole-pixel offset (x, y)."""
    f = bg.clone()
    h, w = img.shape[2:]
    sl = (slice(None), slice(None), slice(offset[1], offset[1] + h), slice(offset[0], offset[0] + w))
    f[sl] = f[sl] * (1 - mask) + img
    return f


# ------------------------------------------------------------------------------------------------- points
def test_five_points():
    lm = torch.zeros(2, 68, 2)
    lm[:, 36] = torch.tensor([10.0, 20.0])
    lm[:, 39] = torch.tensor([14.0, 22.0])
    lm[:, 42] = torch.tensor([30.0, 21.0])
    lm[:, 45] = torch.tensor([36.0, 19.0])
    lm[:, 30] = torch.tensor([23.0, 30.0])
    lm[:, 48] = torch.tensor([15.0, 40.0])
    lm[:, 54] = torch.tensor([31.0, 41.0])
    lm[1] += 100
    out = five_points(lm)
    expected = torch.tensor([[12.0, 21.0], [33.0, 20.0], [23.0, 30.0], [15.0, 40.0], [31.0, 41.0]])
    assert out.shape == (2, 5, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], expected + 100)
    assert five_points(lm[0]).shape == (5, 2)


def test_alignment_template_of_the_synthetic_model(bfm, rendered):
    tpl = alignment_template(bfm)
    assert tpl.shape == (5, 2) and tpl.dtype == torch.float32
    assert bool(((tpl > 0) & (tpl < 64)).all())
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = tpl.tolist()
    assert lx < rx and mlx < mrx
    assert ny > max(ly, ry) and min(mly, mry) > ny
    assert lx < nx < rx
    # the mean face's own landmarks are aligned by the identity
    A = estimate_alignment(rendered[2], alignment_template(bfm, torch.float64))
    torch.testing.assert_close(A[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=D), atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------------------- fitting
def test_estimate_alignment_recovers_scale_and_translation():
    cases = [(2.0, (16.0, 36.0)), (0.37, (-5.5, 812.25)), (7.5, (960.0, 540.0))]
    pts, expected = zip(*[similarity_points(TEMPLATE, s, 0.0, t) for s, t in cases])
    A = estimate_alignment(torch.stack(pts), TEMPLATE)
    assert A.shape == (3, 2, 3) and A.dtype == D
    torch.testing.assert_close(A, torch.stack(expected), atol=1e-9, rtol=0)
    # A maps the frame points onto the template
    torch.testing.assert_close(transform_points(A, torch.stack(pts)), TEMPLATE.expand(3, 5, 2), atol=1e-9,
                               rtol=0)


def test_estimate_alignment_recovers_a_rotation():
    cases = [(2.0, 0.3, (100.0, 50.0)), (0.8, -1.2, (3.0, 4.0)), (1.5, math.pi * 0.9, (500.0, 400.0))]
    pts, expected = zip(*[similarity_points(TEMPLATE, s, a, t) for s, a, t in cases])
    A = estimate_alignment(torch.stack(pts), TEMPLATE, rotation=True)
    torch.testing.assert_close(A, torch.stack(expected), atol=1e-9, rtol=0)


def test_scale_only_fit_of_rotated_points_is_the_least_squares_scale():
    p, _ = similarity_points(TEMPLATE, 1.7, 0.25, (40.0, 70.0))
    gen = torch.Generator().manual_seed(0)
    p = p + 0.5 * torch.randn(5, 2, generator=gen, dtype=D)
    A = estimate_alignment(p[None], TEMPLATE)[0]
    # frame ~ s template + t in frame pixels: unknowns (s, tx, ty), one row per coordinate
    q = TEMPLATE.numpy()
    rows = np.concatenate([np.stack([q[:, 0], np.ones(5), np.zeros(5)], 1),
                           np.stack([q[:, 1], np.zeros(5), np.ones(5)], 1)])
    target = np.concatenate([p[:, 0].numpy(), p[:, 1].numpy()])
    (s, tx, ty), *_ = np.linalg.lstsq(rows, target, rcond=None)
    expected = torch.tensor([[1 / s, 0, -tx / s], [0, 1 / s, -ty / s]], dtype=D)
    torch.testing.assert_close(A, expected, atol=1e-9, rtol=0)


def test_estimate_alignment_68_points_float32_and_upside_down():
    lm = torch.rand(2, 68, 2, generator=torch.Generator().manual_seed(1)) * 50
    lm[:, [36, 39, 42, 45, 30, 48, 54]] = torch.tensor(
        [[20, 24], [24, 24], [40, 25], [48, 24], [32, 34], [23, 46], [41, 45]], dtype=torch.float32) * 3
    A = estimate_alignment(lm, TEMPLATE.float())
    assert A.dtype == torch.float32
    torch.testing.assert_close(A, estimate_alignment(five_points(lm), TEMPLATE.float()))
    p, expected = similarity_points(TEMPLATE, 1.2, math.pi, (200.0, 200.0))
    with pytest.raises(ValueError, match=r"frame 0.*rotation=True"):
        estimate_alignment(p[None], TEMPLATE)
    torch.testing.assert_close(estimate_alignment(p[None], TEMPLATE, rotation=True)[0], expected, atol=1e-9,
                               rtol=0)
    # a mirror image: the best similarity is a proper rotation, never a reflection
    mirrored = TEMPLATE * torch.tensor([-1.0, 1.0], dtype=D) + 100
    M = estimate_alignment(mirrored[None], TEMPLATE, rotation=True)[0, :, :2]
    assert float(torch.linalg.det(M)) > 0
    torch.testing.assert_close(M[0, 0], M[1, 1])
    torch.testing.assert_close(M[0, 1], -M[1, 0])


def test_invert_transform_and_smooth():
    p, A = similarity_points(TEMPLATE, 2.5, 0.4, (10.0, -3.0))
    Ainv = invert_alignment(A[None])
    torch.testing.assert_close(transform_points(Ainv, TEMPLATE[None])[0], p, atol=1e-9, rtol=0)
    torch.testing.assert_close(invert_alignment(Ainv), A[None], atol=1e-12, rtol=0)
    # moving average with the window shrinking at the ends
    seq = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(2), dtype=D)
    sm = smooth_alignment(seq, 3)
    torch.testing.assert_close(sm[0], (seq[0] + seq[1]) / 2)
    torch.testing.assert_close(sm[3], (seq[2] + seq[3] + seq[4]) / 3)
    torch.testing.assert_close(sm[5], (seq[4] + seq[5]) / 2)
    const = A.expand(5, 2, 3)
    torch.testing.assert_close(smooth_alignment(const, 5), const)
    assert torch.equal(smooth_alignment(seq, 1), seq)


# ----------------------------------------------------------------------------------------- crop and paste
def test_crop_of_an_embedded_render_gives_the_render_back(bfm, rendered):
    img, mask, lm = rendered
    H, W, offset = 200, 160, (16, 36)
    frame = embed(background(H, W), img.repeat_interleave(2, 2).repeat_interleave(2, 3),
                  mask.repeat_interleave(2, 2).repeat_interleave(2, 3), offset)
    lm_frame = lm * 2 + torch.tensor(offset, dtype=D)
    A = estimate_alignment(lm_frame, alignment_template(bfm, D))
    crop = crop_faces(frame, A, 64)
    assert crop.shape == (1, 3, 64, 64) and crop.dtype == D
    inside = mask.expand_as(crop) > 0
    assert inside.sum() > 1000
    torch.testing.assert_close(crop[inside], img[inside], atol=1e-9, rtol=0)
    torch.testing.assert_close(crop_faces(frame.float(), A.float(), (64, 64))[inside], img.float()[inside],
                               atol=1e-5, rtol=0)


def test_paste_of_a_render_and_untouched_outside(bfm, rendered):
    img, mask, lm = rendered
    H, W, offset = 200, 160, (16, 36)
    bg = background(H, W)
    A = estimate_alignment(lm * 2 + torch.tensor(offset, dtype=D), alignment_template(bfm, D))
    up = embed(bg, F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False),
               F.interpolate(mask, scale_factor=2, mode="bilinear", align_corners=False), offset)
    out = paste_faces(bg, img, mask, A, feather=2)
    assert out.shape == bg.shape and out.dtype == D
    # alpha in the frame: paste ones onto zeros
    zeros, ones = torch.zeros(1, 1, H, W, dtype=D), torch.ones(1, 1, 64, 64, dtype=D)
    alpha = paste_faces(zeros, ones, mask, A, feather=2)
    warped_mask = paste_faces(zeros, ones, mask, A, feather=0)
    full = (alpha >= 1 - 1e-12).expand_as(out)
    assert full.sum() > 3 * 3000
    torch.testing.assert_close(out[full], up[full], atol=1e-9, rtol=0)
    outside = (warped_mask == 0).expand_as(out)
    assert outside.sum() > 3 * 20000
    assert torch.equal(out[outside], bg[outside])
    assert bool((alpha[warped_mask == 0] == 0).all())
    # nothing outside the face changes, even bit for bit, in float32
    out32 = paste_faces(bg.float(), img.float(), mask.float(), A.float())
    assert torch.equal(out32[outside], bg.float()[outside])


def test_round_trip_whole_pixel_shift(bfm, rendered):
    img, mask, lm = rendered
    H, W, offset = 90, 100, (21, 13)
    frame = embed(background(H, W), img, mask, offset)
    A = estimate_alignment(lm + torch.tensor(offset, dtype=D), alignment_template(bfm, D))
    crop = crop_faces(frame, A, 64)
    torch.testing.assert_close(crop, frame[:, :, 13:77, 21:85], atol=1e-9, rtol=0)
    for feather in (0, 3):
        torch.testing.assert_close(paste_faces(frame, crop, mask, A, feather=feather), frame, atol=1e-9,
                                   rtol=0)


def test_crop_and_paste_follow_a_rotated_similarity():
    # linear ramps are reproduced exactly by bilinear sampling, so values pin down the sampling positions
    scale, theta, t = 1.6, 0.35, (70.0, 30.0)
    R, tt = rot(theta), torch.tensor(t, dtype=D)
    _, A = similarity_points(TEMPLATE, scale, theta, t)
    A = A[None]
    H, W, h, w = 140, 170, 40, 48
    yy, xx = torch.meshgrid(torch.arange(H, dtype=D) + 0.5, torch.arange(W, dtype=D) + 0.5, indexing="ij")
    ramp = lambda x, y: 0.01 * x - 0.02 * y + 3.0  # noqa: E731
    frame = ramp(xx, yy)[None, None]
    crop = crop_faces(frame, A, (h, w))
    assert crop.shape == (1, 1, h, w)
    v, u = torch.meshgrid(torch.arange(h, dtype=D) + 0.5, torch.arange(w, dtype=D) + 0.5, indexing="ij")
    p = scale * torch.stack([u, v], -1) @ R.T + tt  # crop -> frame by hand
    assert float(p[..., 0].min()) > 1 and float(p[..., 0].max()) < W - 1
    assert float(p[..., 1].min()) > 1 and float(p[..., 1].max()) < H - 1
    torch.testing.assert_close(crop[0, 0], ramp(p[..., 0], p[..., 1]), atol=1e-9, rtol=0)
    # paste a ramp defined in crop coordinates with a full mask: inside, the frame gets the ramp at A p
    faces = ramp(u, v)[None, None] * 0.5
    out = paste_faces(torch.zeros(1, 1, H, W, dtype=D), faces, torch.ones(1, 1, h, w, dtype=D), A, feather=0)
    q = (torch.stack([xx, yy], -1) - tt) @ R / scale  # frame -> crop by hand: R^T (p - t) / s
    deep = (q[..., 0] > 1) & (q[..., 0] < w - 1) & (q[..., 1] > 1) & (q[..., 1] < h - 1)
    assert deep.sum() > 1000
    torch.testing.assert_close(out[0, 0][deep], 0.5 * ramp(q[..., 0], q[..., 1])[deep], atol=1e-9, rtol=0)
    away = (q[..., 0] < -1) | (q[..., 0] > w + 1) | (q[..., 1] < -1) | (q[..., 1] > h + 1)
    assert away.sum() > 1000 and bool((out[0, 0][away] == 0).all())  # nothing pasted beyond the crop
    # and crop of the paste round-trips the ramp in the interior of the crop
    back = crop_faces(out, A, (h, w))
    torch.testing.assert_close(back[..., 2:-2, 2:-2], faces[..., 2:-2, 2:-2], atol=1e-9, rtol=0)


def test_feathered_mask():
    n, r = 49, 18.0
    yy, xx = torch.meshgrid(torch.arange(n, dtype=D) + 0.5, torch.arange(n, dtype=D) + 0.5, indexing="ij")
    disk = (((xx - n / 2) ** 2 + (yy - n / 2) ** 2) <= r * r).to(D)[None, None]
    A = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=D)  # crop = frame
    zeros, ones = torch.zeros(1, 1, n, n, dtype=D), torch.ones(1, 1, n, n, dtype=D)
    hard = paste_faces(zeros, ones, disk, A, feather=0)
    torch.testing.assert_close(hard, disk, atol=1e-12, rtol=0)
    for feather in (1, 2, 4):
        a = paste_faces(zeros, ones, disk, A, feather=feather)[0, 0]
        assert bool((a[hard[0, 0] == 0] == 0).all()) and bool((a[disk[0, 0] < 1e-9] < 1e-9).all())
        assert bool((a[disk[0, 0] > 0] > 0).any())
        # square windows: eroded then blurred by feather pixels along the axes, feather sqrt 2 on diagonals
        deep = ((xx - n / 2) ** 2 + (yy - n / 2) ** 2) <= (r - 2 * math.sqrt(2) * feather - 1) ** 2
        assert bool((a[deep] >= 1 - 1e-12).all())
        assert bool(((a >= 0) & (a <= 1 + 1e-12)).all())
        row = a[n // 2, n // 2:]  # centre outward: non-increasing, from 1 to 0
        assert float(row[0]) >= 1 - 1e-12 and float(row[-1]) < 1e-12
        assert bool((row[1:] <= row[:-1] + 1e-12).all())
        ramp = row[(row > 1e-12) & (row < 1 - 1e-12)]
        assert ramp.numel() >= feather  # a soft band, not a step
    # feathering only ever shrinks the region that changes
    assert int((paste_faces(zeros, ones, disk, A, feather=1) > 0).sum()) < int((hard > 0).sum())


def test_paste_is_differentiable_in_faces():
    gen = torch.Generator().manual_seed(3)
    _, A = similarity_points(TEMPLATE, 1.3, 0.2, (0.5, -0.7))
    frames = torch.rand(1, 2, 7, 6, generator=gen, dtype=D)
    faces = torch.rand(1, 2, 5, 5, generator=gen, dtype=D, requires_grad=True)
    mask = torch.zeros(1, 1, 5, 5, dtype=D)
    mask[..., 1:5, 0:5] = 1
    assert torch.autograd.gradcheck(lambda f: paste_faces(frames, f, mask, A[None], feather=1), (faces,))
    out = paste_faces(frames, faces, mask, A[None], feather=0)
    out.sum().backward()
    assert float(faces.grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs(bfm):
    lm = TEMPLATE[None].repeat(3, 1, 1)
    with pytest.raises(ValueError, match="'landmarks'"):
        five_points(torch.zeros(3, 67, 2))
    with pytest.raises(TypeError, match="'landmarks'"):
        five_points(torch.zeros(68, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="'model'"):
        alignment_template(object())
    with pytest.raises(ValueError, match="'landmarks'"):
        estimate_alignment(torch.zeros(3, 10, 2, dtype=D), TEMPLATE)
    with pytest.raises(ValueError, match="'landmarks'"):
        estimate_alignment(TEMPLATE, TEMPLATE)
    with pytest.raises(ValueError, match="'template'"):
        estimate_alignment(lm, TEMPLATE[:4])
    with pytest.raises(TypeError, match="'landmarks'"):
        estimate_alignment(lm.long(), TEMPLATE)
    bad = lm.clone()
    bad[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'landmarks'.*frame 2"):
        estimate_alignment(bad, TEMPLATE)
    same = lm.clone()
    same[1] = torch.tensor([5.0, 7.0], dtype=D)
    for rotation in (False, True):
        with pytest.raises(ValueError, match=r"frame 1.*coincide"):
            estimate_alignment(same, TEMPLATE, rotation=rotation)
    with pytest.raises(ValueError, match="'template'.*coincide"):
        estimate_alignment(lm, torch.ones(5, 2, dtype=D))
    with pytest.raises(ValueError, match="'A'"):
        invert_alignment(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="'points'"):
        transform_points(torch.zeros(1, 2, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="'window'"):
        smooth_alignment(torch.zeros(4, 2, 3), 2)

    A = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]).repeat(2, 1, 1)
    frames, faces, mask = torch.rand(2, 3, 20, 20), torch.rand(2, 3, 8, 8), torch.ones(2, 1, 8, 8)
    with pytest.raises(TypeError, match="'frames'"):
        crop_faces((frames * 255).to(torch.uint8), A, 8)
    with pytest.raises(ValueError, match="'frames'"):
        crop_faces(frames[0], A, 8)
    with pytest.raises(ValueError, match="'A'"):
        crop_faces(frames, A[:1], 8)
    with pytest.raises(ValueError, match="'A'"):
        crop_faces(frames, A[:, :, :2], 8)
    with pytest.raises(ValueError, match="'size'"):
        crop_faces(frames, A, (8, 0))
    nan_A = A.clone()
    nan_A[1, 0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"'A'.*frame 1"):
        crop_faces(frames, nan_A, 8)
    with pytest.raises(TypeError, match="'frames'"):
        paste_faces(frames.long(), faces, mask, A)
    with pytest.raises(ValueError, match="'faces'"):
        paste_faces(frames, faces[:1], mask, A)
    with pytest.raises(ValueError, match="'faces'"):
        paste_faces(frames, faces[:, :1], mask, A)
    with pytest.raises(TypeError, match="'faces'"):
        paste_faces(frames, faces.long(), mask, A)
    with pytest.raises(ValueError, match="'mask'"):
        paste_faces(frames, faces, mask[:1], A)
    with pytest.raises(ValueError, match="'mask'"):
        paste_faces(frames, faces, mask.expand(2, 3, 8, 8), A)
    with pytest.raises(ValueError, match="'mask'"):
        paste_faces(frames, faces, mask * 2, A)
    with pytest.raises(ValueError, match="'A'"):
        paste_faces(frames, faces, mask, A[:1])
    with pytest.raises(ValueError, match="'A'"):
        paste_faces(frames, faces, mask, A[0])
    with pytest.raises(ValueError, match="'feather'"):
        paste_faces(frames, faces, mask, A, feather=-1)
    with pytest.raises(ValueError, match="'feather'"):
        paste_faces(frames, faces, mask, A, feather=1.5)
