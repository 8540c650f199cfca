"""Saliency metrics (pyvision_fast.metrics.saliency) on maps whose scores can be worked out by hand, against
independent computations (scikit-learn's ROC AUC, NumPy's corrcoef, SciPy's entropy, a literal loop of the MIT
benchmark's AUC-Judd), and the per-frame / per-video averaging of SaliencyMetrics."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy
from sklearn.metrics import roc_auc_score

from pyvision_fast.metrics.saliency import (EVAL_SIZE, METRIC_NAMES, SaliencyMetrics, auc_borji, auc_judd, cc,
                                            fixation_mask, kld, nss, resize_map, saliency_scores, sim)

H, W = EVAL_SIZE
N = H * W


def block_gt(n_side: int = 10) -> np.ndarray:
    """Zeros with one n_side x n_side block of ones: the fixations are exactly the block."""
    g = np.zeros((H, W))
    g[50:50 + n_side, 100:100 + n_side] = 1.0
    return g


def blob(cy: float, cx: float, sigma: float, shape=(H, W)) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


def test_fixations_are_mean_plus_two_std():
    g = block_gt()
    assert fixation_mask(g).sum() == 100 and fixation_mask(g)[55, 105]
    assert not fixation_mask(np.ones((4, 4))).any()


def test_perfect_prediction():
    g = block_gt()
    p = 100 / N
    assert auc_judd(g, g, jitter=False) == 1.0
    assert auc_judd(g, g, rng=0) == pytest.approx(1.0, abs=1e-9)
    # negatives sampled from the whole map hit the block with probability p: expected area 1 - p/2
    assert auc_borji(g, g, rng=0) == pytest.approx(1 - p / 2, abs=0.01)
    assert cc(g, g) == pytest.approx(1.0)
    assert sim(g, g) == pytest.approx(1.0)
    assert kld(g, g) == pytest.approx(0.0, abs=1e-12)
    assert nss(g, g) == pytest.approx(math.sqrt((1 - p) / p))  # (1 - p) / sqrt(p (1 - p)) at every fixation


def test_uniform_prediction():
    g, u = block_gt(), np.full((H, W), 0.3)
    assert auc_judd(u, g, jitter=False) == 0.5
    assert auc_borji(u, g, rng=0) == 0.5
    assert abs(auc_judd(u, g, rng=0) - 0.5) < 0.15  # jitter breaks the ties at random
    assert cc(u, g) == 0.0 and nss(u, g) == 0.0  # documented: a blank map scores no correlation
    assert sim(u, g) == pytest.approx(100 / N)  # sum over the block of min(1/N, 1/100)
    assert kld(u, g) == pytest.approx(math.log(N / 100))  # sum over the block of (1/100) log((1/100)/(1/N))


def test_constant_gt_has_no_fixation():
    g, p = np.full((H, W), 2.0), blob(60, 120, 10)
    for f in (auc_judd, auc_borji, nss, cc):
        assert math.isnan(f(p, g))
    assert sim(p, g) == pytest.approx(np.minimum(p / p.sum(), 1 / N).sum())


def test_inverted_prediction():
    g = blob(60, 80, 8)
    inv = g.max() - g
    assert auc_judd(inv, g, rng=0) < 0.05
    assert auc_borji(inv, g, rng=0) < 0.2
    assert cc(inv, g) == pytest.approx(-1.0)
    assert nss(inv, g) < -1
    assert sim(inv, g) < 0.5 and kld(inv, g) > 1


def _mit_auc_judd(s: np.ndarray, fix: np.ndarray) -> float:
    """The MIT benchmark's AUC_Judd.m loop, literally (1-based i), on a tie-free map."""
    s = (s - s.min()) / (s.max() - s.min())
    sth = s[fix]
    nf, npix = sth.size, s.size
    tp, fp = [0.0], [0.0]
    for i, t in enumerate(np.sort(sth)[::-1], start=1):
        tp.append(i / nf)
        fp.append(((s >= t).sum() - i) / (npix - nf))
    tp.append(1.0)
    fp.append(1.0)
    return sum((fp[k + 1] - fp[k]) * (tp[k + 1] + tp[k]) / 2 for k in range(len(tp) - 1))


def test_auc_judd_against_independent_computations():
    rng = np.random.default_rng(3)
    shape = (12, 24)
    g = blob(5, 9, 2.5, shape) + 0.02 * rng.random(shape)
    s = blob(6, 11, 4, shape) + 0.5 * rng.random(shape)
    fix = fixation_mask(g)
    nf = int(fix.sum())
    assert 3 <= nf < 100
    ours = auc_judd(s, g, size=shape, jitter=False)
    assert ours == pytest.approx(_mit_auc_judd(s, fix), abs=1e-12)
    # the benchmark's curve has a point only at each fixation's value, so it exceeds the exact ROC area by
    # fp(at the lowest fixation value) / (2 nf)
    fp_last = (s[~fix] >= s[fix].min()).mean()
    assert ours - roc_auc_score(fix.ravel(), s.ravel()) == pytest.approx(fp_last / (2 * nf), abs=1e-12)


def test_cc_sim_kld_against_numpy_scipy():
    rng = np.random.default_rng(4)
    g = blob(40, 60, 9) + 0.1 * rng.random((H, W))
    s = blob(45, 70, 15) + 0.1 * rng.random((H, W))
    assert cc(s, g) == pytest.approx(np.corrcoef(s.ravel(), g.ravel())[0, 1], abs=1e-12)
    assert kld(s, g) == pytest.approx(entropy(g.ravel(), s.ravel()), rel=1e-6)
    a, b = (s - s.min()) / np.ptp(s), (g - g.min()) / np.ptp(g)
    assert sim(s, g) == pytest.approx(np.minimum(a / a.sum(), b / b.sum()).sum(), abs=1e-12)
    fix = fixation_mask(g)
    assert nss(s, g) == pytest.approx(((s - s.mean()) / s.std())[fix].mean(), abs=1e-12)


def test_resize_to_eval_size_and_inputs():
    # a 960x1920 GT (Wild360's size) and a 224x448 prediction are compared at 120x240
    big = np.kron(blob(60, 120, 6), np.ones((8, 8)))
    assert resize_map(big).shape == EVAL_SIZE
    assert resize_map(np.full((224, 448), 0.25)) == pytest.approx(np.full(EVAL_SIZE, 0.25), abs=1e-6)
    small = torch.nn.functional.interpolate(torch.tensor(blob(60, 120, 6))[None, None], size=(224, 448),
                                            mode="bilinear")[0, 0]
    scores = saliency_scores(small.float(), big, rng=0)
    assert set(scores) == set(METRIC_NAMES)
    assert scores["cc"] > 0.99 and scores["auc_judd"] > 0.99 and scores["sim"] > 0.9 and scores["kld"] < 0.05
    # seeded draws repeat
    assert auc_borji(small, big, rng=1) == auc_borji(small, big, rng=1)
    with pytest.raises(ValueError, match="2-D"):
        cc(np.zeros((2, 3, 4)), big)
    with pytest.raises(ValueError, match="non-finite"):
        cc(np.full((H, W), np.nan), big)
    with pytest.raises(ValueError, match="resample"):
        resize_map(big, resample="cubic")


def test_accumulator_averages_per_video_then_over_videos():
    g = blob(60, 120, 8)
    u = np.full((H, W), 0.5)
    perfect = torch.tensor(g)[None]                      # video 7: one frame, CC 1
    blank = torch.tensor(u)[None].expand(3, H, W)        # video 2: three frames, CC 0
    by_video = SaliencyMetrics()
    by_video.update(perfect, perfect, video=7)
    by_video.update(blank, torch.tensor(g)[None].expand(3, H, W), video=2)
    out = by_video.compute()
    assert out["cc"].item() == pytest.approx(0.5) and out["frames"].item() == 4
    assert out["sim"].item() == pytest.approx((1 + sim(u, g)) / 2)
    by_frame = SaliencyMetrics(average="frame")
    by_frame.update(perfect, perfect, video=7)
    by_frame.update(blank, torch.tensor(g)[None].expand(3, H, W), video=2)
    assert by_frame.compute()["cc"].item() == pytest.approx(0.25)
    # a frame without fixations is left out and counted
    by_video.update(torch.tensor(g)[None], torch.ones(1, H, W), video=9)
    out = by_video.compute()
    assert out["undefined_frames"].item() == 1 and out["cc"].item() == pytest.approx(0.5)


def test_accumulator_is_independent_of_batching():
    rng = np.random.default_rng(0)
    gts = torch.tensor(np.stack([blob(50 + 3 * i, 100 + 5 * i, 7) for i in range(4)]))
    preds = gts + torch.tensor(0.3 * rng.random((4, H, W)))
    whole = SaliencyMetrics(n_splits=10)
    whole.update(preds, gts, video=1)
    split = SaliencyMetrics(n_splits=10)
    split.update(preds[2:], gts[2:], video=1, frames=torch.tensor([2, 3]))
    split.update(preds[:2], gts[:2], video=1)
    a, b = whole.compute(), split.compute()
    assert all(a[k].item() == pytest.approx(b[k].item(), abs=1e-12) for k in METRIC_NAMES)
    with pytest.raises(ValueError, match="same T"):
        whole.update(preds, gts[:2], video=1)
    with pytest.raises(ValueError, match="average"):
        SaliencyMetrics(average="clip")


def test_accumulator_synchronises_like_one_process():
    """Two processes' states gathered (torchmetrics' sync with a stand-in all-gather) give the metrics of one
    process that saw every frame, also when a process saw none."""
    gts = torch.tensor(np.stack([blob(50 + 5 * i, 90 + 9 * i, 8) for i in range(3)]))
    preds = gts.flip(-1) + 0.2
    one = SaliencyMetrics(n_splits=5)
    one.update(preds[:2], gts[:2], video=0)
    one.update(preds[2:], gts[2:], video=1)
    rank1 = SaliencyMetrics(n_splits=5)
    rank1.update(preds[2:], gts[2:], video=1)
    for other in (rank1, SaliencyMetrics(n_splits=5)):
        def gather(tensor, group=None, other=other):
            theirs = [torch.cat(other.rows)] if other.rows else []
            return [tensor, *(theirs or [torch.tensor([], dtype=torch.float64)])]

        rank0 = SaliencyMetrics(n_splits=5, dist_sync_fn=gather, distributed_available_fn=lambda: True)
        rank0.update(preds[:2], gts[:2], video=0)
        got = rank0.compute()
        assert got["frames"].item() == (3 if other is rank1 else 2)
        if other is rank1:
            want = one.compute()
        else:
            alone = SaliencyMetrics(n_splits=5)
            alone.update(preds[:2], gts[:2], video=0)
            want = alone.compute()
        assert all(got[k].item() == pytest.approx(want[k].item(), abs=1e-12) for k in want)
