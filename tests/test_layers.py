"""Shapes, masks and causality of the building blocks."""

import pytest
import torch

from sitok.layers import (
    AdaRMSNorm,
    LlamaStack,
    RMSNorm,
    TimestepEmbedding,
    lengths_to_mask,
    sinusoidal_embedding,
    stack_frames,
    stacked_lengths,
    unstack_frames,
)


def test_stack_unstack_round_trip():
    x = torch.randn(2, 10, 3)
    y = stack_frames(x, 4)
    assert y.shape == (2, 3, 12)
    torch.testing.assert_close(y[0, 0], torch.cat([x[0, 0], x[0, 1], x[0, 2], x[0, 3]]))
    assert (y[:, 2, 6:] == 0).all()  # tail padding
    torch.testing.assert_close(unstack_frames(y, 4, 10), x)
    assert stacked_lengths(torch.tensor([10, 8, 1]), 4).tolist() == [3, 2, 1]
    assert lengths_to_mask(torch.tensor([3, 1]), 4).tolist() == [[True, True, True, False], [True, False, False, False]]


def test_adarmsnorm_starts_as_rmsnorm_and_responds_to_condition():
    norm, plain = AdaRMSNorm(8, 4), RMSNorm(8)
    x, c = torch.randn(2, 5, 8), torch.randn(2, 4)
    torch.testing.assert_close(norm(x, c), plain(x))
    torch.nn.init.normal_(norm.gain.weight)
    assert not torch.allclose(norm(x, c), plain(x))
    assert norm(x, c).shape == (2, 5, 8)


def test_timestep_embedding():
    e = sinusoidal_embedding(torch.tensor([0.0, 0.5, 1.0]), 16)
    assert e.shape == (3, 16) and not torch.allclose(e[0], e[1])
    assert TimestepEmbedding(12)(torch.rand(5)).shape == (5, 12)


@pytest.mark.parametrize("causal", [True, False])
def test_stack_shapes_and_padding_mask(causal):
    torch.manual_seed(0)
    net = LlamaStack(2, 32, 64, 4, causal=causal).eval()
    x = torch.randn(2, 7, 32)
    lengths = torch.tensor([7, 4])
    y = net(x, lengths_to_mask(lengths, 7))
    assert y.shape == (2, 7, 32) and torch.isfinite(y).all()
    # valid frames do not depend on what the padding holds
    x2 = x.clone()
    x2[1, 4:] = 100 * torch.randn(3, 32)
    y2 = net(x2, lengths_to_mask(lengths, 7))
    torch.testing.assert_close(y[1, :4], y2[1, :4])
    # and equal the unpadded computation
    torch.testing.assert_close(y[1, :4], net(x[1:2, :4])[0], atol=1e-5, rtol=1e-5)


def test_causal_output_at_k_ignores_later_frames():
    torch.manual_seed(0)
    net = LlamaStack(2, 32, 64, 4, causal=True).eval()
    x = torch.randn(1, 9, 32)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 4, 32)
    y, y2 = net(x), net(x2)
    torch.testing.assert_close(y[:, :5], y2[:, :5])
    assert not torch.allclose(y[:, 5:], y2[:, 5:])
    # non-causal stacks do look ahead
    nc = LlamaStack(2, 32, 64, 4, causal=False).eval()
    assert not torch.allclose(nc(x)[:, :5], nc(x2)[:, :5])


def test_adaptive_stack_uses_timestep():
    torch.manual_seed(0)
    net = LlamaStack(1, 16, 32, 2, causal=False, cond_dim=8)
    for m in net.modules():
        if isinstance(m, AdaRMSNorm):
            torch.nn.init.normal_(m.gain.weight)
    x = torch.randn(2, 5, 16)
    assert not torch.allclose(net(x, c=torch.zeros(2, 8)), net(x, c=torch.ones(2, 8)))
