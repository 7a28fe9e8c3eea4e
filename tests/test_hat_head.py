"""The folded reconstruction head computes the reference chain, borders included."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hatstream.models.flops import hat_macs
from hatstream.models.hat import HAT, HATConfig
from hatstream.models.hat_head import FoldedHead, fold_head


def _tiny(scale: int, num_feat: int = 8) -> HAT:
    torch.manual_seed(scale)
    cfg = HATConfig(upscale=scale, embed_dim=16, depths=(1,), num_heads=(1,), window_size=8, compress_ratio=2,
                    squeeze_factor=8, mlp_ratio=2.0, num_feat=num_feat)
    model = HAT.from_config(cfg).eval()
    for m in model.modules():  # biases matter at the border: make them large
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.bias, std=0.5)
    return model


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("size", [(16, 24), (13, 29), (7, 9)])  # (7, 9): below the strips, the chain runs
def test_folded_head_equals_chain_everywhere(scale, size):
    model = _tiny(scale)
    head = FoldedHead(model.upsample, model.conv_last, scale)
    f = torch.randn(2, 8, *size)
    with torch.no_grad():
        want = model.conv_last(model.upsample(f))
        got = head(f)
    assert got.shape == want.shape
    err = (got - want).abs()
    assert err.max().item() < 1e-5 * want.abs().max().item()
    # The border ring is where the chain's own zero padding differs from the folded conv's view.
    for ring in (err[..., :scale, :], err[..., -scale:, :], err[..., :scale], err[..., -scale:]):
        assert ring.max().item() < 1e-5


def test_whole_model_unchanged_and_cheaper():
    model = _tiny(4)
    folded = copy.deepcopy(model)
    fold_head(folded)
    fold_head(folded)  # idempotent
    assert isinstance(folded.folded_head, FoldedHead)
    assert folded.state_dict().keys() == model.state_dict().keys()  # what the Ray engine ships
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() < 1e-5
    cfg = HATConfig(upscale=4, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=16,
                    compress_ratio=3, squeeze_factor=30)  # HAT x4
    head_chain = hat_macs(cfg, 64, 64) - hat_macs(cfg, 64, 64, folded_head=True)
    assert head_chain / 4096 > 600_000  # ~690 k of ~765 k MACs per input pixel saved
