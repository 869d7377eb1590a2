"""The TensorBoard/eval picture: one outline per glimpse, in the step's colour, where the glimpse reads."""

from __future__ import annotations

import torch

from stnbench import viz
from stnbench.models.transforms import Attention, ThinPlateSpline


def colour_mask(picture: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    return (picture - colour[:, None, None]).abs().sum(0) < 1e-6


def test_each_glimpse_outline_is_drawn_where_it_reads_in_its_step_colour():
    images = torch.zeros(1, 1, 28, 28)
    thetas = torch.tensor([[[0.5, 0.0, 0.0], [0.25, 0.5, 0.5]]])  # centre half, then bottom-right quarter
    glimpses = torch.rand(1, 2, 1, 14, 14)
    grid = viz.transformer_grid(images, glimpses, thetas, Attention(), upscale=1)
    # make_grid: 2 px padding, tiles of 28x28 -> the input tile is rows/cols 2..29.
    tile = grid[:, 2:30, 2:30]
    first, second = (colour_mask(tile, viz.STEP_COLOURS[s]) for s in range(2))
    ys, xs = first.nonzero().T
    assert 6 <= xs.min() <= 8 and 19 <= xs.max() <= 21 and 6 <= ys.min() <= 8 and 19 <= ys.max() <= 21
    ys, xs = second.nonzero().T
    assert xs.min() >= 16 and ys.min() >= 16 and xs.max() <= 25  # the bottom-right quarter
    assert grid.shape[-1] == 3 * 28 + 4 * 2  # input + 2 glimpses per row


def test_multichannel_inputs_get_an_outline_per_panel_and_tps_outlines_work():
    images = torch.zeros(1, 2, 28, 28)
    tps = ThinPlateSpline()
    thetas = (0.5 * tps.identity()).view(1, 1, -1)
    grid = viz.transformer_grid(images, torch.zeros(1, 1, 2, 28, 28), thetas, tps, upscale=2)
    tile = grid[:, 2:58, 2:114]  # 2 panels of 56x56 side by side
    mask = colour_mask(tile, viz.STEP_COLOURS[0])
    assert mask[:, :56].any() and mask[:, 56:].any()
    torch.testing.assert_close(mask[:, :56], mask[:, 56:])  # the same outline on both channels
