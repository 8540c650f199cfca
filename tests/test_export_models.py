"""Registry models to ONNX of standard operators: the graph passes the TensorRT operator check, ONNX Runtime
agrees with PyTorch, the batch dimension stays dynamic."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from pyvision_fast import cli  # noqa: E402
from pyvision_fast.export import export_model, run_onnxruntime  # noqa: E402
from pyvision_fast.export.models import example_input_shape, inference_module  # noqa: E402
from pyvision_fast.models import create_model, save_safetensors  # noqa: E402

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_vit_exports_with_its_weights(tmp_path, global_pool):
    torch.manual_seed(0)
    src = create_model("vit_tiny_patch16_224", global_pool=global_pool, **TINY_VIT)
    weights = save_safetensors(src.state_dict(), tmp_path / "w.safetensors")
    report = export_model("vit_tiny_patch16_224", tmp_path / "vit.onnx", checkpoint=weights,
                          model_args=dict(global_pool=global_pool, **TINY_VIT))
    assert report.tensorrt_compatible, report.tensorrt_unsupported
    assert report.max_abs_diff < 1e-4
    assert "Softmax" in report.op_types and not any(t.startswith("pvf") for t in report.op_types)
    x = torch.rand(3, 3, 32, 32)  # another batch size than the export's example
    (onnx_out,) = run_onnxruntime(report.path, [x])
    with torch.no_grad():
        expected = src.eval()(x).numpy()
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)


def test_example_input_comes_from_the_model():
    m = create_model("vit_tiny_patch16_224", img_size=(32, 64), patch_size=8, depth=1)
    assert example_input_shape(inference_module(m), 4) == (4, 3, 32, 64)
    with pytest.raises(ValueError, match="cannot tell its input size"):
        example_input_shape(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="unknown model"):
        export_model("no_such_model", "x.onnx")


def test_mae_encoder_exports_without_masking(tmp_path):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=4)
    mae = create_model("mae_vit_tiny_patch16", **args)
    weights = save_safetensors(mae.state_dict(), tmp_path / "mae.safetensors")
    report = export_model("mae_vit_tiny_patch16", tmp_path / "mae.onnx", checkpoint=weights, model_args=args)
    assert report.tensorrt_compatible and report.max_abs_diff < 1e-4
    x = torch.rand(3, 3, 32, 32)
    (tokens,) = run_onnxruntime(report.path, [x])
    assert tokens.shape == (3, 1 + 16, 64)
    # the unmasked encoder equals the MAE's own encoder at mask ratio 0 once its shuffle is undone
    with torch.no_grad():
        latent, _, ids_restore = mae.eval().forward_encoder(x, 0.0)
    unshuffled = torch.gather(latent[:, 1:], 1, ids_restore.unsqueeze(-1).expand(-1, -1, 64))
    np.testing.assert_allclose(tokens[:, 1:], unshuffled.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tokens[:, 0], latent[:, 0].numpy(), rtol=1e-4, atol=1e-4)


def test_vqgan_exports_with_the_quantizer_translated(tmp_path):
    """VQGAN(x) to ONNX: the vector_quantize op becomes standard operators, ONNX Runtime gives the same
    reconstruction (the codes are well separated, so no near-tie can flip an index between the two)."""
    torch.manual_seed(0)
    args = dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(4,), z_channels=4, resolution=32,
                n_embed=64, embed_dim=4)
    vq = create_model("vqgan_f8_16384", **args)
    with torch.no_grad():
        vq.quantize.embedding.weight.copy_(torch.randn(64, 4) * 3)
    weights = save_safetensors(vq.state_dict(), tmp_path / "vq.safetensors")
    report = export_model("vqgan_f8_16384", tmp_path / "vq.onnx", checkpoint=weights, model_args=args)
    assert report.tensorrt_compatible, report.tensorrt_unsupported
    assert not any(t.startswith("pvf") for t in report.op_types) and "ArgMin" in report.op_types
    assert report.max_abs_diff < 1e-4


def _train_checkpoint(tmp_path, model="vit_tiny_patch16_224"):
    """A checkpoint as pvf train writes it: the weights and, in the safetensors metadata, the model's identity."""
    torch.manual_seed(0)
    args = {k: v for k, v in TINY_VIT.items() if k not in ("num_classes", "img_size")}
    src = create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, **args)
    # as classify records it: img_size is the recipe's (--img-size), not among the model arguments
    meta = {"model": model, "model_args": json.dumps(args), "num_classes": "5", "img_size": "32"}
    return src, save_safetensors(src.state_dict(), tmp_path / "checkpoint-best.safetensors", metadata=meta)


def test_pvf_export_by_name_takes_the_model_arguments_from_a_train_checkpoint(tmp_path, capsys):
    src, weights = _train_checkpoint(tmp_path)
    out = tmp_path / "vit.onnx"
    assert cli.main(["export", "vit_tiny_patch16_224", "--checkpoint", str(weights), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all nodes supported" in printed and "ONNX Runtime vs PyTorch: max |diff|" in printed
    x = torch.rand(4, 3, 32, 32)
    (onnx_out,) = run_onnxruntime(out, [x])
    with torch.no_grad():
        expected = src.eval()(x).numpy()
    assert onnx_out.shape == (4, 5)
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)


def test_pvf_export_by_name_rejects_bad_requests(tmp_path, capsys):
    _, weights = _train_checkpoint(tmp_path, model="vit_small_patch16_224")
    out = str(tmp_path / "m.onnx")
    cases = [
        (["export", "vit_tiny_patch16_224", "--checkpoint", str(weights), "-o", out], "holds a 'vit_small"),
        (["export", "not_a_model", "-o", out], "neither a registered model"),
        (["export", "vit_tiny_patch16_224", "--model-arg", "depth", "-o", out], "KEY=VALUE"),
        (["export", "vit_tiny_patch16_224", "--model-arg", "no_such_arg=1", "-o", out], "no_such_arg"),
        (["export", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "missing.safetensors"), "-o", out],
         "missing.safetensors"),
        (["export", "torch.nn:Identity", "-o", out], "needs --input"),
    ]
    for argv, match in cases:
        assert cli.main(argv) == 2, argv
        assert match in capsys.readouterr().err, argv
    assert not (tmp_path / "m.onnx").exists()
