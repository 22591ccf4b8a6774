"""torch.compile: the U-Net's training step and guided forward trace as one graph, without host syncs."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from imagen.unets import Unet

KEYWORDS = dict(dim=8, cond_dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
                layer_cross_attns=(False, True), text_embed_dim=12, attn_heads=2, attn_dim_head=8)
SYNCS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.tolist, torch.Tensor.__int__,
         torch.Tensor.__float__, torch.Tensor.nonzero}


class _SyncRecorder(TorchFunctionMode):
    """Records every tensor method that copies a value to the host (``.item()``, ``bool(t)``, ...)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCS:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, 16, 16, generator=g), torch.rand(2, generator=g), torch.randn(2, 4, 12, generator=g),
            torch.tensor([[True, True, False, False], [True, True, True, False]]))


def _loss(unet):
    def loss(x, t, text, mask):
        return (unet(x, t, text_embeds=text, text_mask=mask, cond_drop_prob=0.5) - x).square().mean()
    return loss


def _guided(unet):
    def guided(x, t, text, mask):
        return unet.forward_with_cond_scale(x, t, text_embeds=text, text_mask=mask, cond_scale=3.0)
    return guided


def test_forward_and_guidance_make_no_host_sync():
    unet = Unet(**KEYWORDS)
    recorder = _SyncRecorder()
    with recorder:
        _loss(unet)(*_inputs()).backward()
        with torch.no_grad():
            _guided(unet)(*_inputs())
    assert recorder.calls == []


def test_the_sync_recorder_sees_a_sync():
    recorder = _SyncRecorder()
    with recorder:
        bool(torch.ones(()) > 0)
        torch.ones(()).item()
    assert recorder.calls == ["__bool__", "item"]


@pytest.mark.slow
def test_guided_forward_traces_as_one_graph():
    """dynamo counts no graph break in forward_with_cond_scale (the training step's forward and
    backward compile with fullgraph=True in test_training.py, which raises on any break)."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_guided(Unet(**KEYWORDS)))(*_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
