import pytest
import torch

from encoders import Tokens
from fusion import CrossAttentionFusion, MeanFusion


def _tokens(batch=3, length=5, dim=8, present=(True, True, True), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i, p in enumerate(present):
        if p:
            mask[i, : 2 + i] = True
    return Tokens(x, mask)


@pytest.mark.parametrize("fusion_cls", [CrossAttentionFusion, MeanFusion])
def test_masked_tokens_and_missing_modalities_do_not_change_the_output(fusion_cls):
    torch.manual_seed(0)
    fusion = fusion_cls(["a", "b"], dim=8).eval()
    a, b = _tokens(), _tokens(present=(True, False, True), seed=1)
    out = fusion({"a": a, "b": b}).pooled
    # Change every hidden value: padding of a, and all of b where b is missing.
    a2 = Tokens(torch.where(a.mask.unsqueeze(-1), a.x, torch.full_like(a.x, 1e3)), a.mask)
    b2 = Tokens(torch.where(b.mask.unsqueeze(-1), b.x, torch.full_like(b.x, -7.0)), b.mask)
    out2 = fusion({"a": a2, "b": b2}).pooled
    assert out.shape == (3, 8)
    torch.testing.assert_close(out, out2)


@pytest.mark.parametrize("fusion_cls", [CrossAttentionFusion, MeanFusion])
def test_works_with_any_subset_of_modalities_per_row(fusion_cls):
    fusion = fusion_cls(["a", "b"], dim=8).eval()
    a = _tokens(present=(True, False, True))
    b = _tokens(present=(False, True, True), seed=1)
    out = fusion({"a": a, "b": b}).pooled
    assert torch.isfinite(out).all()
    # A row with only modality a gives what a single-modality call with that row gives.
    alone = fusion({"a": Tokens(a.x[:1], a.mask[:1]), "b": Tokens(b.x[:1], b.mask[:1])}).pooled
    torch.testing.assert_close(out[:1], alone)


def test_modality_type_embedding_tells_modalities_apart():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(["a", "b"], dim=8).eval()
    with torch.no_grad():
        fusion.modality["b"].copy_(torch.randn(8))  # a constant shift would vanish in LayerNorm
    t = _tokens(present=(True, True, True))
    empty = Tokens(t.x, torch.zeros_like(t.mask))
    as_a = fusion({"a": t, "b": empty}).pooled
    as_b = fusion({"a": empty, "b": t}).pooled
    assert not torch.allclose(as_a, as_b)


def test_a_row_with_no_modality_is_rejected_not_silently_nan():
    fusion = CrossAttentionFusion(["a"], dim=8)
    with pytest.raises(ValueError, match="no modality"):
        fusion({"a": _tokens(present=(True, False, True))})


def test_modality_dropout_always_keeps_one_modality_per_row():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(["a", "b"], dim=8, modality_dropout=0.99).train()
    out = fusion({"a": _tokens(), "b": _tokens(seed=1)}).pooled
    assert torch.isfinite(out).all()
