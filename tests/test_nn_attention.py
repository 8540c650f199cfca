"""FusedAttention / patch_timm / MultiheadAttention against timm and torch.nn.MultiheadAttention."""
import pytest
import torch

from pyvision_fast import use_backend
from pyvision_fast.nn import FusedAttention, MultiheadAttention, patch_timm

timm = pytest.importorskip("timm")  # a dev dependency (requirements-dev.txt); optional for users


def test_fused_attention_has_timm_keys_and_output():
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    theirs = Attention(64, num_heads=4, qkv_bias=True).eval()
    ours = FusedAttention(64, num_heads=4).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight",
                                                                   "proj.bias"}
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 17, 64)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_patch_timm_vit_tiny_same_logits():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        swapped = patch_timm(model)
        after = model(x)
    assert swapped == len(model.blocks) == 12
    assert all(isinstance(b.attn, FusedAttention) for b in model.blocks)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.triton
def test_patched_vit_runs_the_triton_kernels():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=2).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    x = torch.randn(2, 3, 32, 32, device=device)  # 4 patches + cls token: L = 5, head dim 64
    with torch.no_grad():
        before = model(x)
    patch_timm(model)
    with use_backend("triton"), torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_patch_timm_leaves_qk_norm_blocks_alone():
    from timm.models.vision_transformer import Attention

    model = torch.nn.Sequential(Attention(32, num_heads=2, qk_norm=True, norm_layer=torch.nn.LayerNorm),
                                Attention(32, num_heads=2))
    assert patch_timm(model) == 1
    assert isinstance(model[0], Attention) and isinstance(model[1], FusedAttention)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("masks", ["none", "key_padding", "attn_bool", "attn_float", "both"])
def test_multihead_attention_drop_in(batch_first, masks):
    torch.manual_seed(1)
    theirs = torch.nn.MultiheadAttention(48, 4, batch_first=batch_first).eval()
    ours = MultiheadAttention(48, 4, batch_first=batch_first).eval()
    ours.load_state_dict(theirs.state_dict())
    L, S, B = 7, 9, 3
    shape = (lambda n: (B, n, 48)) if batch_first else (lambda n: (n, B, 48))
    q, k, v = torch.randn(shape(L)), torch.randn(shape(S)), torch.randn(shape(S))
    kpm = am = None
    if masks in ("key_padding", "both"):
        kpm = torch.zeros(B, S, dtype=torch.bool)
        kpm[:, -3:] = True
    if masks in ("attn_bool", "both"):
        am = torch.rand(L, S) > 0.7
        am[:, 0] = False
    if masks == "attn_float":
        am = torch.randn(L, S)
    want, _ = theirs(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)
    got, weights = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)
    assert weights is None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got_w, w = ours(q, k, v, key_padding_mask=kpm, attn_mask=am)  # need_weights=True: torch's path
    want_w, ww = theirs(q, k, v, key_padding_mask=kpm, attn_mask=am)
    torch.testing.assert_close(got_w, want_w)
    torch.testing.assert_close(w, ww)


def test_multihead_attention_gradients_and_unbatched():
    torch.manual_seed(2)
    theirs = torch.nn.MultiheadAttention(32, 2)
    ours = MultiheadAttention(32, 2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 32, requires_grad=True)  # unbatched (L, E)
    a, _ = ours(x, x, x, need_weights=False)
    b, _ = theirs(x, x, x, need_weights=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad(a.sum(), [x, *ours.parameters()])
    gb = torch.autograd.grad(b.sum(), [x, *theirs.parameters()])
    for u, w in zip(ga, gb):
        torch.testing.assert_close(u, w, atol=1e-5, rtol=1e-5)
