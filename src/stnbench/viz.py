"""Pictures of what a spatial transformer does: inputs with glimpse outlines beside the glimpses."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from stnbench.metrics import read
from stnbench.models.contract import reads_source, run_model
from stnbench.source import Source

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
                  upscale: int = 2, source: Source | None = None) -> torch.Tensor | None:
    """Run ``model`` on ``images`` (and their ``source``, for a model that starts from it) and draw what its
    transformer did (``transformer_grid``); None for models without a spatial transformer. ``stnbench-eval``'s
    picture."""
    output, thetas = run_for_picture(model, images, device, None, source)
    if output.glimpses is None or thetas is None:
        return None
    return transformer_grid(images, output.glimpses.cpu(), thetas, model.transform, upscale=upscale)


def run_for_picture(model, images: torch.Tensor, device: torch.device | str, num_steps: int | None,
                    source: Source | None) -> tuple:
    """(the model's output, its thetas on the CPU as warps of ``images``). A model that starts from the
    ``source`` samples the clean digit: H_0^-1 H_t is the same glimpse in the input's frame, where it is drawn."""
    started = source is not None and reads_source(model)
    with torch.no_grad():
        output = run_model(model, images.to(device), num_steps, source.to(device) if started else None)
    if output.thetas is None:
        return output, None
    thetas = output.thetas.cpu()
    return output, in_image_frame(model.transform, thetas, source.homography.cpu()) if started else thetas


# ---- labelled pictures: input, glimpses, label and prediction -------------------------------------------------
BACKGROUND = (128, 128, 128)  # make_grid's pad_value=0.5
CAPTION_BACKGROUND = (32, 32, 32)
RIGHT, WRONG = (130, 235, 130), (255, 120, 120)


def predictions(output, targets: torch.Tensor, end_class: int | None = None) -> torch.Tensor:
    """The model's answer per image, aligned with ``targets`` ([B] labels or [B, T] digit sequences; with an end
    class, sequences of variable length)."""
    from stnbench.module import step_logits  # the module draws its TensorBoard pictures with this file

    return step_logits(output, targets.to(output.logits.device), end_class).argmax(-1).cpu()


def _answer(values: torch.Tensor, end_class: int | None = None) -> str:
    """A label or sequence as text: ``7``, ``305``; a variable-length sequence up to its end class (``-``: none)."""
    values = read(values, end_class)
    if not values:
        return "-"
    return ("" if all(v < 10 for v in values) else " ").join(str(v) for v in values)


def caption(target: torch.Tensor | None, predicted: torch.Tensor, end_class: int | None = None) -> str:
    """``label 7  pred 1`` (digit sequences: ``label 305  pred 305``; with an end class, the digits before it);
    only the prediction without a label."""
    return ((f"label {_answer(target, end_class)}  " if target is not None else "")
            + f"pred {_answer(predicted, end_class)}")


def is_right(target: torch.Tensor, predicted: torch.Tensor, end_class: int | None = None) -> bool:
    """The answer is the label, or the whole sequence (with an end class: its count and every digit)."""
    return read(target.cpu(), end_class) == read(predicted.cpu(), end_class)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ImportError):  # a Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


def _wrap(line: str, length, width: float) -> list[str]:
    """``line`` in pieces no longer than ``width`` (as ``length`` measures text), broken after spaces and
    commas (a run folder's name has no spaces), and anywhere inside a piece too long for a line."""
    import re

    pieces, current = [], ""
    for token in re.split(r"(?<=[ ,])", line):
        if current and length(current + token) > width:
            pieces.append(current.rstrip())
            current = ""
        current += token
        while len(current) > 1 and length(current) > width:
            cut = max([k for k in range(1, len(current)) if length(current[:k]) <= width] or [1])
            pieces.append(current[:cut])
            current = current[cut:]
    return pieces + ([current.rstrip()] if current.strip() else [])


def labelled_grid(panels: list[torch.Tensor], captions: list[str], right: list[bool | None],
                  title: str | None = None, columns: int | None = None, font_size: int = 12) -> torch.Tensor:
    """Panels ([3, h, w] in [0, 1]) laid out as a grid, each under its caption (green: right, red: wrong),
    with ``title`` (lines) on top; ``columns`` default to a roughly square picture. Returns [3, H, W] in [0, 1]."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max([measure.textlength(text, font=font) for text in captions] or [0])
    band = font_size + 6
    cell_w = int(max(max(p.shape[-1] for p in panels), text_width + 8))
    cell_h = max(p.shape[-2] for p in panels) + band
    count = len(panels)
    columns = columns or math.ceil(math.sqrt(count * cell_h / cell_w))
    columns = max(1, min(count, columns))
    rows = math.ceil(count / columns)
    width = columns * cell_w
    lines = [part for line in (title.splitlines() if title else [])
             for part in _wrap(line, lambda text: measure.textlength(text, font=font), width - 12)]
    title_band = len(lines) * (font_size + 4) + 8 if lines else 0
    width = max([width] + [int(measure.textlength(line, font=font)) + 12 for line in lines])
    canvas = Image.new("RGB", (width, title_band + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if lines:
        draw.rectangle((0, 0, width, title_band - 1), fill=CAPTION_BACKGROUND)
        for k, line in enumerate(lines):
            draw.text((6, 4 + k * (font_size + 4)), line, fill=(255, 255, 255), font=font)
    for i, (panel, text, ok) in enumerate(zip(panels, captions, right, strict=True)):
        x, y = (i % columns) * cell_w, title_band + (i // columns) * cell_h
        draw.rectangle((x, y, x + cell_w - 1, y + band - 1), fill=CAPTION_BACKGROUND)
        colour = (235, 235, 235) if ok is None else RIGHT if ok else WRONG
        draw.text((x + 4, y + 2), text, fill=colour, font=font)
        pixels = (panel.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        canvas.paste(Image.fromarray(pixels), (x, y + band))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def labelled_model_picture(model, images: torch.Tensor, targets: torch.Tensor | None = None,
                           device: torch.device | str = "cpu", upscale: int = 2, title: str | None = None,
                           columns: int | None = None, end_class: int | None = None,
                           source: Source | None = None) -> torch.Tensor | None:
    """``model_picture`` as people read it: per image the input with each glimpse's outline and the glimpses,
    under its true label (``targets``, if given) and the model's prediction; the images laid out as a grid
    under ``title`` and a line that says how to read it. None for models without a spatial transformer.
    ``end_class``: the data's (sequences of variable length): answers are read up to it, and a model that can
    runs as many steps as the targets have. ``source``: the images' clean digits and warps (data=perturbed),
    for a model that starts from them; its glimpses' outlines are drawn where they fall on the input image."""
    steps_wanted = targets.shape[1] if targets is not None and targets.dim() == 2 else None
    output, thetas = run_for_picture(model, images, device, steps_wanted, source)
    if output.glimpses is None or thetas is None:
        return None
    glimpses = output.glimpses.cpu()
    if targets is not None:
        predicted = predictions(output, targets, end_class)
    else:  # without labels: the answer of every step the model emits (one step: its label)
        steps = output.logits.argmax(-1).cpu()
        predicted = steps[:, -1] if steps.shape[1] == 1 else steps
    panels = [transformer_grid(images[i:i + 1], glimpses[i:i + 1], thetas[i:i + 1], model.transform, upscale)
              for i in range(len(images))]
    captions = [caption(None if targets is None else targets[i], predicted[i], end_class) for i in range(len(images))]
    right = [None if targets is None else is_right(targets[i], predicted[i], end_class) for i in range(len(images))]
    steps = glimpses.shape[1]
    how = ("each image: input with the glimpse" + ("s' outlines (colour = step)" if steps > 1 else "'s outline")
           + ", then the glimpse" + ("s" if steps > 1 else "") + "\nlabel and prediction: green right, red wrong")
    return labelled_grid(panels, captions, right, title=f"{title}\n{how}" if title else how, columns=columns,
                         font_size=max(11, 5 * upscale))


def in_image_frame(transform, thetas: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """Sampling warps of the clean digit, thetas [B, S, 8] (projective), as warps of the image that the
    homographies [B, 3, 3] made from it: the same glimpses, outlined on the model's input."""
    batch, steps = thetas.shape[:2]
    matrices = transform.matrix(thetas.reshape(batch * steps, -1)).view(batch, steps, 3, 3)
    relative = torch.linalg.inv(homography.double())[:, None] @ matrices.double()
    return transform.params_of(relative.reshape(batch * steps, 3, 3).float()).view(batch, steps, -1)
