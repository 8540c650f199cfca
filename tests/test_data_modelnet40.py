"""ModelNet40 readers (normal_resampled text and ply_hdf5_2048) on fixtures written in those formats, and the
PointNet++ augmentations. Expected values are computed here by hand from the written numbers."""
import h5py
import numpy as np
import pytest
import torch

from pointcloud_fixtures import SOLIDS, write_modelnet40_h5, write_modelnet40_normal
from pyvision_fast.data.modelnet40 import (Jitter, ModelNet40H5, ModelNet40Normal, RandomPointDropout, RandomScale,
                                           RandomShift, detect_modelnet40_format, modelnet40_splits, pc_normalize,
                                           pointnet2_train_transform, read_points_txt)


def _write_cloud(root, cls, shape_id, rows):
    (root / cls).mkdir(parents=True, exist_ok=True)
    (root / cls / f"{shape_id}.txt").write_text("".join(",".join(f"{v:.6f}" for v in r) + "\n" for r in rows))


def _tiny_normal(root, rows_a, rows_b):
    """Two classes with underscores in one name ('night_stand', as in ModelNet40), one train shape each."""
    (root / "modelnet40_shape_names.txt").write_text("airplane\nnight_stand\n")
    (root / "modelnet40_train.txt").write_text("airplane_0001\nnight_stand_0001\n")
    (root / "modelnet40_test.txt").write_text("night_stand_0002\n")
    _write_cloud(root, "airplane", "airplane_0001", rows_a)
    _write_cloud(root, "night_stand", "night_stand_0001", rows_b)
    _write_cloud(root, "night_stand", "night_stand_0002", rows_b)


def test_normal_resampled_first_points_normalised_by_hand(tmp_path):
    # 4 points; the first 3 are read: (0,0,0), (2,0,0), (0,2,0) -> mean (2/3, 2/3, 0); farthest from it is
    # (2,0,0) or (0,2,0) at distance sqrt((4/3)^2 + (2/3)^2) = sqrt(20)/3
    rows = [(0, 0, 0, 0, 0, 1), (2, 0, 0, 1, 0, 0), (0, 2, 0, 0, 1, 0), (100, 100, 100, 0, 0, 1)]
    _tiny_normal(tmp_path, rows, rows)
    ds = ModelNet40Normal(tmp_path, "train", num_points=3, use_normals=True)
    assert ds.classes == ["airplane", "night_stand"] and ds.targets == [0, 1] and len(ds) == 2
    x, y = ds[1]
    assert x.shape == (3, 6) and x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 1
    scale = np.sqrt(20) / 3
    expected_xyz = (np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]]) - [2 / 3, 2 / 3, 0]) / scale
    np.testing.assert_allclose(x[:, :3].numpy(), expected_xyz, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(x[:, 3:].numpy(), [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert ModelNet40Normal(tmp_path, "train", num_points=3)[0][0].shape == (3, 3)
    test = ModelNet40Normal(tmp_path, "test", num_points=4)
    assert test.targets == [1] and test.samples[0][0].endswith("night_stand/night_stand_0002.txt")


def test_normal_resampled_uniform_uses_farthest_points(tmp_path):
    # farthest point sampling from point 0 over (0,0,0), (0.1,0,0), (5,0,0), (0,3,0): 0, then (5,0,0), then
    # (0,3,0) (distance 3 from (0,0,0) against 0.1)
    rows = [(0, 0, 0, 0, 0, 1), (0.1, 0, 0, 0, 0, 1), (5, 0, 0, 0, 0, 1), (0, 3, 0, 0, 0, 1)]
    _tiny_normal(tmp_path, rows, rows)
    x, _ = ModelNet40Normal(tmp_path, "train", num_points=3, uniform=True)[0]
    chosen = np.array([[0, 0, 0], [5, 0, 0], [0, 3, 0]], dtype=np.float64)
    np.testing.assert_allclose(x.numpy(), pc_normalize(chosen), rtol=1e-6, atol=1e-6)


def test_fixture_roundtrip_and_detection(tmp_path):
    write_modelnet40_normal(tmp_path / "txt", classes=SOLIDS[:3], train_per_class=2, test_per_class=1,
                            num_points=300)
    write_modelnet40_h5(tmp_path / "h5", classes=SOLIDS[:3], train_per_class=3, test_per_class=2, num_points=256,
                        shapes_per_file=4)
    assert detect_modelnet40_format(tmp_path / "txt") == ("normal_resampled", tmp_path / "txt")
    assert detect_modelnet40_format(tmp_path / "h5") == ("hdf5", tmp_path / "h5")
    (tmp_path / "outer").mkdir()
    (tmp_path / "h5").rename(tmp_path / "outer" / "modelnet40_ply_hdf5_2048")
    assert detect_modelnet40_format(tmp_path / "outer")[0] == "hdf5"
    train, test = modelnet40_splits(tmp_path / "txt", num_points=200)
    assert len(train) == 6 and len(test) == 3 and train.classes == list(SOLIDS[:3])
    x, _ = test[0]
    assert x.shape == (200, 3)
    assert float(x.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-6)  # unit sphere
    torch.testing.assert_close(x.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    train, test = modelnet40_splits(tmp_path / "outer", num_points=128)
    assert (len(train), len(test)) == (9, 6) and isinstance(train, ModelNet40H5)
    # the HDF5 items are the stored clouds' first points, labels as stored
    with h5py.File(tmp_path / "outer" / "modelnet40_ply_hdf5_2048" / "ply_data_train1.h5") as f:
        stored, stored_label = f["data"][0], int(f["label"][0, 0])
    x, y = train[4]
    np.testing.assert_array_equal(x.numpy(), stored[:128])
    assert int(y) == stored_label
    assert train.samples[4][0].endswith("ply_data_train1.h5[0]")
    assert sorted(set(train.targets)) == [0, 1, 2]
    _, only_test = modelnet40_splits(tmp_path / "txt", num_points=10, with_train=False)
    assert len(only_test) == 3
    with pytest.raises(FileNotFoundError, match="neither"):
        detect_modelnet40_format(tmp_path)


def test_text_reader_errors_name_file_and_line(tmp_path):
    rows = [(0, 0, 0, 0, 0, 1)] * 5
    _tiny_normal(tmp_path, rows, rows)
    bad = tmp_path / "airplane" / "airplane_0001.txt"
    lines = bad.read_text().splitlines()
    for line3, match in [("1,2,3,4,5", "airplane_0001.txt:3: expected 6"),
                         ("1,2,3,4,5,6,7", "airplane_0001.txt:3: expected 6"),
                         ("1,2,x,4,5,6", "airplane_0001.txt:3: expected 6"),
                         ("1,2,nan,4,5,6", "airplane_0001.txt:3: NaN or Inf"),
                         ("1,inf,3,4,5,6", "airplane_0001.txt:3: NaN or Inf")]:
        bad.write_text("\n".join(lines[:2] + [line3] + lines[3:]) + "\n")
        with pytest.raises(ValueError, match=match):
            ModelNet40Normal(tmp_path, "train", num_points=5, cache=False)[0]
    bad.write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(ValueError, match="airplane_0001.txt: has 2 points, fewer than the 5 requested"):
        ModelNet40Normal(tmp_path, "train", num_points=5)[0]
    bad.write_text("")
    with pytest.raises(ValueError, match="has 0 points"):
        ModelNet40Normal(tmp_path, "train", num_points=5)[0]
    np.testing.assert_array_equal(read_points_txt(tmp_path / "night_stand" / "night_stand_0001.txt", 2),
                                  np.array(rows[:2], np.float32))


def test_list_errors_name_file_and_line(tmp_path):
    rows = [(0, 0, 0, 0, 0, 1)] * 5
    _tiny_normal(tmp_path, rows, rows)
    (tmp_path / "modelnet40_train.txt").write_text("airplane_0001\nchair_0001\n")
    with pytest.raises(ValueError, match=r"modelnet40_train.txt:2: shape 'chair_0001' names class 'chair'"):
        ModelNet40Normal(tmp_path, "train")
    (tmp_path / "modelnet40_train.txt").write_text("airplane_0001\nairplane_0009\n")
    with pytest.raises(FileNotFoundError, match=r"modelnet40_train.txt:2: point file .*airplane_0009.txt"):
        ModelNet40Normal(tmp_path, "train")
    (tmp_path / "modelnet40_shape_names.txt").unlink()
    with pytest.raises(FileNotFoundError, match="modelnet40_shape_names.txt does not exist"):
        ModelNet40Normal(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        ModelNet40Normal(tmp_path, "val")
    with pytest.raises(ValueError, match="num_points"):
        ModelNet40Normal(tmp_path, "train", num_points=0)


def _h5(root, name, data, label):
    with h5py.File(root / name, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)


def test_hdf5_errors_name_file_and_item(tmp_path):
    (tmp_path / "shape_names.txt").write_text("a\nb\n")
    good = np.zeros((3, 16, 3), np.float32)
    _h5(tmp_path, "ply_data_train0.h5", good, np.array([[0], [1], [2]], np.uint8))
    with pytest.raises(ValueError, match=r"ply_data_train0.h5: item 2 has label 2, outside the 2 classes"):
        ModelNet40H5(tmp_path, "train", num_points=8)
    nan = good.copy()
    nan[1, 5, 0] = np.nan
    _h5(tmp_path, "ply_data_train0.h5", nan, np.array([[0], [1], [1]], np.uint8))
    with pytest.raises(ValueError, match=r"ply_data_train0.h5: item 1 holds NaN or Inf"):
        ModelNet40H5(tmp_path, "train", num_points=8)
    _h5(tmp_path, "ply_data_train0.h5", good, np.array([[0], [1], [1]], np.uint8))
    with pytest.raises(ValueError, match="holds 16 points per shape, fewer than the 32 requested"):
        ModelNet40H5(tmp_path, "train", num_points=32)
    assert len(ModelNet40H5(tmp_path, "train", num_points=16)) == 3
    (tmp_path / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n"
                                              "data/modelnet40_ply_hdf5_2048/ply_data_train7.h5\n")
    with pytest.raises(FileNotFoundError, match=r"train_files.txt:2: .*ply_data_train7.h5"):
        ModelNet40H5(tmp_path, "train")
    _h5(tmp_path, "ply_data_test0.h5", np.zeros((2, 16, 2), np.float32), np.zeros((2, 1), np.uint8))
    with pytest.raises(ValueError, match=r"ply_data_test0.h5: 'data' must have shape \(B, P, 3\)"):
        ModelNet40H5(tmp_path, "test", num_points=8)
    with h5py.File(tmp_path / "ply_data_test0.h5", "w") as f:
        f.create_dataset("data", data=good)
    with pytest.raises(ValueError, match="has no 'label' dataset"):
        ModelNet40H5(tmp_path, "test", num_points=8)
    (tmp_path / "ply_data_test0.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        ModelNet40H5(tmp_path, "test", num_points=8)


def test_augmentations():
    torch.manual_seed(0)
    pts = torch.cat([torch.rand(500, 3), torch.randn(500, 3)], 1)
    # scale: coordinates times one factor in [0.8, 1.25], normals untouched
    out = RandomScale()(pts)
    factor = out[:, :3] / pts[:, :3]
    assert 0.8 <= float(factor.min()) and float(factor.max()) <= 1.25
    torch.testing.assert_close(factor, factor[0].expand_as(factor).contiguous(), rtol=1e-5, atol=0)
    assert torch.equal(out[:, 3:], pts[:, 3:])
    # shift: one offset per axis within 0.1
    d = RandomShift()(pts)[:, :3] - pts[:, :3]
    torch.testing.assert_close(d, d[:1].expand_as(d).contiguous(), rtol=0, atol=1e-6)
    assert float(d.abs().max()) <= 0.1
    # jitter: per-point noise clipped at 0.05 (sigma 0.03 makes the clip bind)
    j = Jitter(sigma=0.03, clip=0.05)(pts)[:, :3] - pts[:, :3]
    assert float(j.abs().max()) <= 0.05 + 1e-6 and float(j.abs().max()) > 0.04 and float(j.std()) > 0.01
    # dropout: the size stays, dropped points become copies of the first
    drops = []
    for _ in range(50):
        out = RandomPointDropout()(pts)
        assert out.shape == pts.shape
        changed = (out != pts).any(1)
        assert torch.equal(out[changed], pts[:1].expand(int(changed.sum()), -1))
        drops.append(float(changed.float().mean()))
    assert max(drops) <= 0.875 + 0.05 and max(drops) > 0.3 and min(drops) < 0.3
    assert pointnet2_train_transform()(pts).shape == pts.shape
    assert pointnet2_train_transform(dropout=False, scale=False, shift=False) is None
