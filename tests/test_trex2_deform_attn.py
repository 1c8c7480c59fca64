"""Multi-scale deformable attention: grid_sample implementation == the explicit loop definition."""

import pytest
import torch

from regionprompt.trex2.deform_attn import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_reference,
)

SHAPES = ((6, 7), (3, 4), (2, 1))
TOKENS = sum(h * w for h, w in SHAPES)


def _random_inputs(batch=2, queries=5, heads=2, head_dim=3, points=3, spread=1.4):
    levels = len(SHAPES)
    value = torch.randn(batch, TOKENS, heads, head_dim, dtype=torch.float64)
    # Some locations fall outside [0, 1]: zero padding must match too.
    locations = torch.rand(batch, queries, heads, levels, points, 2, dtype=torch.float64) * spread - (spread - 1) / 2
    weights = torch.rand(batch, queries, heads, levels * points, dtype=torch.float64).softmax(-1)
    return value, locations, weights.view(batch, queries, heads, levels, points)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spread", [1.4, 5.0])
def test_matches_reference_loops_on_random_inputs(seed, spread):
    # spread 5: most samples lie far outside their map, where the one-canvas sampling clamps them
    # next to the map (and must never read the neighbouring level's band).
    torch.manual_seed(seed)
    value, locations, weights = _random_inputs(spread=spread)
    fast = ms_deform_attn(value, SHAPES, locations, weights)
    slow = ms_deform_attn_reference(value, SHAPES, locations, weights)
    assert fast.shape == (2, 5, 2 * 3)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


def test_sampling_a_cell_centre_returns_that_cell():
    value, _, _ = _random_inputs(batch=1, queries=1, heads=1, head_dim=4, points=1)
    h, w = SHAPES[0]
    # Centre of cell (row 2, col 5) on level 0, all weight on level 0.
    locations = torch.zeros(1, 1, 1, 3, 1, 2, dtype=torch.float64)
    locations[0, 0, 0, 0, 0] = torch.tensor([(5 + 0.5) / w, (2 + 0.5) / h])
    weights = torch.zeros(1, 1, 1, 3, 1, dtype=torch.float64)
    weights[..., 0, 0] = 1.0
    out = ms_deform_attn(value, SHAPES, locations, weights)
    torch.testing.assert_close(out[0, 0], value[0, 2 * w + 5, 0], atol=1e-6, rtol=0)


def _module():
    torch.manual_seed(0)
    module = MSDeformAttn(dim=16, heads=2, levels=3, points=2).double()
    for param in module.parameters():  # the default init has zero offsets/weights; make every path matter
        torch.nn.init.normal_(param, std=0.3)
    return module


def test_box_and_point_references_scale_offsets_differently():
    module = _module()
    features = torch.randn(1, TOKENS, 16, dtype=torch.float64)
    query = torch.randn(1, 2, 16, dtype=torch.float64)
    points = torch.tensor([[[0.3, 0.6], [0.7, 0.2]]], dtype=torch.float64)
    as_points = module(query, points, features, SHAPES)
    zero_boxes = module(query, torch.cat([points, torch.zeros_like(points)], -1), features, SHAPES)
    real_boxes = module(query, torch.cat([points, torch.full_like(points, 0.4)], -1), features, SHAPES)
    torch.testing.assert_close(as_points, zero_boxes)  # a zero-size box is a point
    assert (as_points - real_boxes).abs().max() > 1e-3


def test_value_index_equals_one_call_per_query_set():
    module = _module()
    features = torch.randn(3, TOKENS, 16, dtype=torch.float64)
    query = torch.randn(5, 4, 16, dtype=torch.float64)
    reference = torch.rand(5, 4, 4, dtype=torch.float64)
    index = torch.tensor([2, 0, 2, 2, 1])
    together = module(query, reference, features, SHAPES, value_index=index)
    one_by_one = torch.cat([module(query[i : i + 1], reference[i : i + 1], features[index[i] : index[i] + 1], SHAPES)
                            for i in range(5)])
    torch.testing.assert_close(together, one_by_one)


def test_gradients_flow_to_values_offsets_and_weights():
    module = _module().float()
    features = torch.randn(2, TOKENS, 16, requires_grad=True)
    query = torch.randn(2, 3, 16, requires_grad=True)
    module(query, torch.rand(2, 3, 4), features, SHAPES).square().sum().backward()
    assert features.grad.abs().sum() > 0 and query.grad.abs().sum() > 0
    assert module.sampling_offsets.weight.grad.abs().sum() > 0
    assert module.attention_weights.weight.grad.abs().sum() > 0


def test_wrong_reference_shape_is_rejected():
    module = _module()
    with pytest.raises(ValueError, match="reference"):
        module(torch.randn(1, 2, 16, dtype=torch.float64), torch.rand(1, 2, 3, dtype=torch.float64),
               torch.randn(1, TOKENS, 16, dtype=torch.float64), SHAPES)
