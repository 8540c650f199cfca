"""The registry and the ViT family: parameter counts against timm's, strict loading of timm's state_dicts with
equal logits, timm's keyword conventions, local weights only, bad input."""
import pytest
import torch

from pyvision_fast.models import count_parameters, create_model, list_models, load_weights, save_safetensors
from pyvision_fast.models.vit import resize_pos_embed

timm = pytest.importorskip("timm")

# timm 1.0's counts (its own model cards: 5.7M / 22.1M / 86.6M with the 1000-class head)
PARAMS = {
    "vit_tiny_patch16_224": (5_717_416, 5_524_416),
    "vit_small_patch16_224": (22_050_664, 21_665_664),
    "vit_base_patch16_224": (86_567_656, 85_798_656),
}


def test_registry_lists_vits():
    assert set(PARAMS) <= set(list_models())
    assert list_models("vit_*_patch16_224") == sorted(PARAMS)
    assert list_models("no_such_*") == []


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_timm(name):
    with_head, without_head = PARAMS[name]
    assert count_parameters(create_model(name)) == with_head
    assert count_parameters(create_model(name, num_classes=0)) == without_head
    assert count_parameters(timm.create_model(name)) == with_head


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch16_224"])
@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_timm_state_dict_loads_strictly_and_gives_same_logits(name, global_pool):
    torch.manual_seed(0)
    ref = timm.create_model(name, global_pool=global_pool, num_classes=10).eval()
    for p in ref.parameters():  # random, non-trivial weights everywhere (timm zero-inits biases and the head)
        p.data.normal_(0, 0.05)
    ours = create_model(name, global_pool=global_pool, num_classes=10).eval()
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-4, atol=1e-4)


def test_timm_kwargs_override_defaults():
    m = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                     num_classes=7, drop_path_rate=0.1)
    assert m.pos_embed.shape == (1, 1 + 16, 64) and len(m.blocks) == 2 and m.head.out_features == 7
    assert m.blocks[0].drop_path1.__class__.__name__ == "Identity"  # linearly increasing rate starts at 0
    assert m.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                            num_classes=7)
    assert count_parameters(m) == count_parameters(ref)
    assert m(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    assert create_model("vit_tiny_patch16_224", num_classes=0)(torch.randn(1, 3, 224, 224)).shape == (1, 192)


def test_drop_path_trains_and_is_identity_in_eval():
    torch.manual_seed(0)
    m = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3, drop_path_rate=0.5)
    x = torch.randn(8, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    m.train()
    with torch.no_grad():
        assert not torch.equal(m(x), m(x))


def _tiny(**kw):
    return create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, **kw)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_path_loads_local_weights(tmp_path, suffix):
    torch.manual_seed(0)
    src = _tiny(num_classes=5)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_safetensors(src.state_dict(), path)
    else:
        torch.save({"model": src.state_dict(), "epoch": 3}, path)  # MAE/DeiT-style wrapper
    dst = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                       num_classes=5, pretrained=True, checkpoint_path=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src.eval()(x), rtol=0, atol=0)


def test_head_of_another_size_is_skipped_and_pos_embed_resized(tmp_path):
    torch.manual_seed(0)
    src = _tiny(num_classes=1000)
    path = save_safetensors(src.state_dict(), tmp_path / "w.safetensors")
    dst = create_model("vit_tiny_patch16_224", img_size=(32, 64), patch_size=8, embed_dim=64, depth=2, num_heads=4,
                       num_classes=7, checkpoint_path=path)
    torch.testing.assert_close(dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight, rtol=0, atol=0)
    assert dst.pos_embed.shape == (1, 1 + 4 * 8, 64)
    expected = resize_pos_embed(src.pos_embed.detach(), (4, 8))
    torch.testing.assert_close(dst.pos_embed.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(dst.pos_embed[:, :1].detach(), src.pos_embed[:, :1].detach(), rtol=0, atol=0)


def test_save_safetensors_writes_tensors_that_share_memory_as_separate_copies(tmp_path):
    """safetensors refuses shared storage; tied weights, a module under two names and views all round-trip."""
    from pyvision_fast.models import read_state_dict

    base = torch.arange(12.0).view(3, 4)
    tensors = {"tied.a": base, "tied.b": base, "row": base[1], "column": base[:, 2], "empty": base[:0],
               "alone": torch.ones(2)}
    path = save_safetensors(tensors, tmp_path / "shared.safetensors")
    back = read_state_dict(path)
    assert back.keys() == tensors.keys()
    for key, value in tensors.items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)
    assert torch.equal(base, torch.arange(12.0).view(3, 4))  # the caller's tensors are left as they were


def test_resize_pos_embed_identity_and_smooth_grid():
    pe = torch.randn(1, 1 + 16, 8)
    assert resize_pos_embed(pe, (4, 4)) is pe
    # a linear ramp over columns stays a ramp (bicubic reproduces linear functions away from the borders)
    ramp = torch.arange(4.0).repeat(4, 1).reshape(1, 16, 1).expand(1, 16, 8)
    out = resize_pos_embed(torch.cat([torch.zeros(1, 1, 8), ramp], 1), (4, 8))
    grid = out[0, 1:, 0].reshape(4, 8)
    assert torch.allclose(grid[0], grid[3]) and (grid[:, 2:6].diff(dim=1) > 0).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown model 'vit_huge_nope'"):
        create_model("vit_huge_nope")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded.*vit_small_patch16_224"):
        create_model("vit_small_patch16_224", pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("vit_tiny_patch16_224", checkpoint_path="/nonexistent/w.safetensors")
    with pytest.raises(TypeError, match="no_such_arg"):
        create_model("vit_tiny_patch16_224", no_such_arg=1)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        create_model("vit_tiny_patch16_224", embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        create_model("vit_tiny_patch16_224", img_size=30, patch_size=8)
    m = _tiny(num_classes=3)
    with pytest.raises(ValueError, match="differs from the model's img_size"):
        m(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        m(torch.randn(1, 1, 32, 32))


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    src = _tiny(num_classes=3)
    state = src.state_dict()
    state.pop("blocks.1.norm1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = save_safetensors(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"missing \['blocks.1.norm1.weight'\].*unexpected \['extra.weight'\]"):
        load_weights(_tiny(num_classes=3), path)
    deeper = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=4)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_weights(deeper, save_safetensors(_tiny().state_dict(), tmp_path / "other.safetensors"))
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(_tiny(), tmp_path / "trunc.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(_tiny(), tmp_path / "junk.pth")


def test_training_checkpoints_with_metadata_load_without_running_code(tmp_path):
    """MAE's checkpoint-*.pth keeps an argparse.Namespace beside the weights, Lightning's .ckpt its callbacks;
    weights_only refuses both classes, so read_state_dict stands inert objects in for them: the weights load and
    the file's own classes are never constructed."""
    import argparse

    src = _tiny(num_classes=3)
    path = tmp_path / "checkpoint-299.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": 299}, path)
    with pytest.raises(Exception):  # what plain weights_only loading does with it
        torch.load(path, weights_only=True)
    dst = load_weights(_tiny(num_classes=3), path)
    torch.testing.assert_close(dst.head.weight, src.head.weight, rtol=0, atol=0)
