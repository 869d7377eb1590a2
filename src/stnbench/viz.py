"""Pictures of what a spatial transformer does: inputs with glimpse outlines beside the glimpses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

# One colour per glimpse step (RGB in [0, 1]); cycles for longer sequences.
STEP_COLOURS = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.3, 0.5, 1.0], [1.0, 1.0, 0.2],
                             [1.0, 0.3, 1.0], [0.2, 1.0, 1.0]])


def glimpse_outline(transform, theta: torch.Tensor, height: int, width: int,
                    points: int = 32) -> torch.Tensor:
    """Pixel coordinates [K, 2] (x, y) of the border of the region a glimpse samples from the input."""
    grid = transform.grid(theta.unsqueeze(0), points, points)[0]  # [p, p, 2] normalised input coords
    border = torch.cat([grid[0], grid[:, -1], grid[-1].flip(0), grid[:, 0].flip(0)])
    x = (border[:, 0] + 1) * width / 2 - 0.5  # inverse of align_corners=False normalisation
    y = (border[:, 1] + 1) * height / 2 - 0.5
    return torch.stack([x, y], -1)


def draw_outline(picture: torch.Tensor, outline: torch.Tensor, colour: torch.Tensor,
                 x_range: tuple[int, int] | None = None) -> None:
    """Paint the points of ``outline`` (densified) into ``picture`` [3, H, W] in place; points outside
    the picture (a zoom-out samples beyond the frame) or outside columns ``x_range`` are skipped."""
    closed = torch.cat([outline, outline[:1]])
    steps = torch.linspace(0, 1, 8).view(1, -1, 1)
    dense = (closed[:-1, None] * (1 - steps) + closed[1:, None] * steps).reshape(-1, 2).round().long()
    height, width = picture.shape[-2:]
    x_min, x_max = x_range or (0, width)
    inside = (dense[:, 0] >= x_min) & (dense[:, 0] < x_max) & (dense[:, 1] >= 0) & (dense[:, 1] < height)
    dense = dense[inside]
    picture[:, dense[:, 1], dense[:, 0]] = colour[:, None]


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] -> [B, 3, H, W]; multi-channel inputs (addition) are shown side by side."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).clone()
    side_by_side = torch.cat(list(images.unbind(1)), dim=-1).unsqueeze(1)
    return side_by_side.expand(-1, 3, -1, -1).clone()


def transformer_grid(images: torch.Tensor, glimpses: torch.Tensor, thetas: torch.Tensor, transform,
                     upscale: int = 2) -> torch.Tensor:
    """One row per image: the input with each glimpse's outline (colour = step, drawn in step order),
    then every glimpse, all ``upscale`` times larger so thin outlines stay readable.

    ``images`` [B, C, H, W], ``glimpses`` [B, S, C, h, w], ``thetas`` [B, S, P]; returns [3, rows, cols].
    """
    images, glimpses = images.detach().float().cpu(), glimpses.detach().float().cpu()
    thetas = thetas.detach().cpu()
    batch, steps = glimpses.shape[:2]
    height, width = images.shape[-2:]
    tiles = []
    for b in range(batch):
        picture = F.interpolate(to_rgb(images[b:b + 1]), scale_factor=upscale, mode="nearest")[0]
        for s in range(steps):  # in step order, so a later glimpse's outline is drawn on top
            colour = STEP_COLOURS[s % len(STEP_COLOURS)]
            outline = (glimpse_outline(transform, thetas[b, s], height, width) + 0.5) * upscale - 0.5
            for channel in range(images.shape[1]):  # multi-channel inputs: one panel per channel
                offset = channel * width * upscale
                draw_outline(picture, outline + outline.new_tensor([offset, 0.0]), colour,
                             (offset, offset + width * upscale))
        tiles.append(picture)
        for s in range(steps):
            glimpse = to_rgb(glimpses[b, s:s + 1].clamp(0, 1))
            tiles.append(F.interpolate(glimpse, size=picture.shape[-2:], mode="nearest")[0])
    return make_grid(tiles, nrow=1 + steps, padding=2, pad_value=0.5)


def model_picture(model, images: torch.Tensor, device: torch.device | str = "cpu",
                  upscale: int = 2) -> torch.Tensor | None:
    """Run ``model`` on ``images`` and draw what its transformer did (``transformer_grid``); None for
    models without a spatial transformer. Shared by TensorBoard logging and ``stnbench-eval``."""
    with torch.no_grad():
        output = model(images.to(device))
    if output.glimpses is None or output.thetas is None:
        return None
    return transformer_grid(images, output.glimpses.cpu(), output.thetas.cpu(), model.transform, upscale=upscale)
