"""Reduced-precision export of registry models: float16 and Q/DQ INT8 graphs that ONNX Runtime runs and TensorRT's
operator check accepts; INT8 calibrated on real image files keeps a trained classifier's accuracy; the engine
metadata and profile checks that need no TensorRT."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from train_fixtures import NO_AUG, TINY_VIT, write_image_folder  # noqa: E402

from pyvision_fast import cli  # noqa: E402
from pyvision_fast.export import (export_model, read_engine_metadata, run_onnxruntime,  # noqa: E402
                                  tensorrt_available)
from pyvision_fast.export.tensorrt_engine import TensorRTModule, metadata_path, profile_shapes  # noqa: E402
from pyvision_fast.models import create_model, save_safetensors  # noqa: E402

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ViT trained to >= 95% on 4 classes of 32x32 pattern images (PNG/JPEG), as test_train_cli does."""
    root = tmp_path_factory.mktemp("quant")
    data = write_image_folder(root / "data")
    out = root / "run"
    assert cli.main(["train", "classify", "--data", str(data), "--output", str(out), *TINY_VIT, *NO_AUG,
                     "--epochs", "4", "--batch-size", "16", "--workers", "0", "--lr", "2e-3", "--no-progress",
                     "--set", "warmup_epochs=1"]) == 0
    return data, out / "checkpoint-best.safetensors"


def test_float16_graph_keeps_float32_io_and_agrees(tmp_path):
    torch.manual_seed(0)
    weights = save_safetensors(create_model("vit_tiny_patch16_224", **SMALL).state_dict(), tmp_path / "w.safetensors")
    report = export_model("vit_tiny_patch16_224", tmp_path / "m.onnx", checkpoint=weights, model_args=SMALL,
                          precision="fp16")
    assert report.precision == "fp16" and report.tensorrt_compatible
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays float32
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) > 10  # the weights are float16
    assert (tmp_path / "m.fp32.onnx").is_file() and report.measurements["fp32 max |diff|"] < 1e-4
    assert 0 < report.max_abs_diff < 2e-2  # float16 rounding, not float32 agreement
    assert report.measurements["ORT ms fp16"] > 0


def test_int8_calibrated_on_images_keeps_the_accuracy(trained, tmp_path):
    data, checkpoint = trained
    out = tmp_path / "vit.int8.onnx"
    report = export_model("vit_tiny_patch16_224", out, checkpoint=checkpoint, precision="int8",
                          calib_dir=data / "train", calib_eval_dir=data / "val",
                          model_args=dict(patch_size=8, depth=2, embed_dim=64, num_heads=2, img_size=32,
                                          num_classes=4),
                          preprocess_config=dict(crop_pct=1.0))  # the classify run's crop (NO_AUG)
    assert report.precision == "int8" and report.tensorrt_compatible, report.tensorrt_unsupported
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(report.op_types)
    model = onnx.load(str(out))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [consts[n.input[2]] for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in consts]
    assert zero_points and all(np.all(z == 0) for z in zero_points)  # symmetric, as TensorRT requires
    assert all(z.dtype == np.int8 for z in zero_points)
    m = report.measurements
    assert m["top1 fp32"] >= 0.95 and m["top1 int8"] >= m["top1 fp32"] - 0.05, m
    assert m["ORT ms int8"] > 0 and m["ORT ms fp32"] > 0


def test_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="calib_dir"):
        export_model("vit_tiny_patch16_224", tmp_path / "m.onnx", model_args=SMALL, precision="int8")
    with pytest.raises(ValueError, match="precision must be"):
        export_model("vit_tiny_patch16_224", tmp_path / "m.onnx", model_args=SMALL, precision="int4")
    with pytest.raises(ValueError, match="int8.? only"):
        export_model("vit_tiny_patch16_224", tmp_path / "m.onnx", model_args=SMALL, calib_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        export_model("vit_tiny_patch16_224", tmp_path / "m.onnx", model_args=SMALL, precision="int8",
                     calib_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        export_model("vit_tiny_patch16_224", tmp_path / "m.onnx", model_args=SMALL, precision="int8",
                     calib_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="preprocessing keys"):
        export_model("vit_tiny_patch16_224", tmp_path / "m.onnx", model_args=SMALL, precision="int8",
                     calib_dir=tmp_path, preprocess_config={"crop": 1.0})
    assert not (tmp_path / "m.onnx").exists()


def test_profile_shapes_checks_every_dynamic_input():
    inputs = {"x": (-1, 3, 32, 32), "lengths": (-1,), "table": (4, 4)}
    shapes = profile_shapes(inputs, min_shapes={"x": (1, 3, 32, 32), "lengths": (1,)},
                            opt_shapes={"x": (8, 3, 32, 32), "lengths": (8,)},
                            max_shapes={"x": (32, 3, 32, 32), "lengths": (32,)})
    assert set(shapes) == {"x", "lengths"}  # the static input needs no profile
    assert shapes["x"] == {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}
    assert profile_shapes({"x": (-1, 3)}, max_shapes={"x": (4, 3)})["x"]["min"] == [4, 3]  # min defaults to opt
    with pytest.raises(ValueError, match="'lengths'.*max_shapes"):
        profile_shapes(inputs, max_shapes={"x": (32, 3, 32, 32)})
    with pytest.raises(ValueError, match="static dimension"):
        profile_shapes({"x": (-1, 3, 32, 32)}, max_shapes={"x": (32, 3, 64, 32)})
    with pytest.raises(ValueError, match="rank"):
        profile_shapes({"x": (-1, 3)}, max_shapes={"x": (32, 3, 1)})
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_shapes({"x": (-1, 3)}, min_shapes={"x": (8, 3)}, opt_shapes={"x": (4, 3)}, max_shapes={"x": (9, 3)})


def test_engine_metadata_reads_without_tensorrt(tmp_path, capsys):
    engine = tmp_path / "m.plan"
    with pytest.raises(FileNotFoundError, match="m.plan"):
        read_engine_metadata(engine)
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(FileNotFoundError, match="m.plan.json"):
        read_engine_metadata(engine)
    meta = {"precision": ["fp32", "fp16"], "inputs": {"x": {"shape": [-1, 3, 32, 32], "min": [1, 3, 32, 32]}},
            "outputs": {"logits": {"shape": [-1, 5]}}}
    metadata_path(engine).write_text(json.dumps(meta))
    assert read_engine_metadata(engine) == meta


@pytest.mark.skipif(tensorrt_available(), reason="checks the message given without TensorRT")
def test_tensorrt_module_without_tensorrt_says_what_to_install(tmp_path):
    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        TensorRTModule(tmp_path / "m.plan")


def test_pvf_export_int8_and_engine_info(trained, tmp_path, capsys):
    data, checkpoint = trained
    out = tmp_path / "vit.onnx"
    assert cli.main(["export", "vit_tiny_patch16_224", "--checkpoint", str(checkpoint), "--int8", "--calib",
                     str(data / "train"), "--calib-limit", "32", "--calib-eval", str(data / "val"),
                     "--preprocess", "crop_pct=1.0", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision: int8" in printed and "top1 int8" in printed and "ORT ms int8" in printed
    assert (tmp_path / "vit.fp32.onnx").is_file() and "QuantizeLinear" in printed
    # a float16 export of a package.module:factory model
    assert cli.main(["export", "torch.nn:Hardswish", "--input", "2x3x8x8", "--fp16", "-o",
                     str(tmp_path / "hs.onnx")]) == 0
    assert "precision: fp16" in capsys.readouterr().out
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"\0")
    (tmp_path / "m.plan.json").write_text(json.dumps({"precision": ["fp32", "int8"]}))
    assert cli.main(["engine-info", str(engine)]) == 0
    assert json.loads(capsys.readouterr().out) == {"precision": ["fp32", "int8"]}
    for argv, match in [
        (["export", "vit_tiny_patch16_224", "--int8", "-o", str(out)], "needs calibration images"),
        (["export", "vit_tiny_patch16_224", "--calib", str(data), "-o", str(out)], "int8' only"),
        (["export", "vit_tiny_patch16_224", "--int8", "--calib", str(data), "--preprocess", "crop=1",
          "-o", str(out)], "preprocessing keys"),
        (["export", "no.such.module:build", "--input", "1x3", "-o", str(out)], "no.such"),
        (["engine-info", str(tmp_path / "none.plan")], "none.plan"),
    ]:
        assert cli.main(argv) == 2, argv
        assert match in capsys.readouterr().err, argv


def test_simplify_shrinks_the_graph_and_keeps_the_outputs(tmp_path):
    pytest.importorskip("onnxslim")
    torch.manual_seed(0)
    weights = save_safetensors(create_model("vit_tiny_patch16_224", **SMALL).state_dict(), tmp_path / "w.safetensors")
    plain = export_model("vit_tiny_patch16_224", tmp_path / "a.onnx", checkpoint=weights, model_args=SMALL)
    slim = export_model("vit_tiny_patch16_224", tmp_path / "b.onnx", checkpoint=weights, model_args=SMALL,
                        simplify=True)
    assert slim.num_nodes < plain.num_nodes and slim.tensorrt_compatible
    assert slim.measurements["simplified nodes"] == f"{plain.num_nodes} -> {slim.num_nodes}"
    assert slim.max_abs_diff < 1e-4  # measured on the simplified file
    x = torch.rand(3, 3, 32, 32)
    (got,), (expected,) = run_onnxruntime(tmp_path / "b.onnx", [x]), run_onnxruntime(tmp_path / "a.onnx", [x])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
