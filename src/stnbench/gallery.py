"""stnbench-gallery: look at a benchmark before training on it (a PNG grid of samples and labels)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from stnbench.cli_help import run_command
from stnbench.errors import USER_ERRORS, ConfigError

if TYPE_CHECKING:
    import torch

# torch, matplotlib and the data are imported where the gallery is drawn, not with this module: a mistyped
# command line is then answered in about a second (stnbench.cli_help), as stnbench-train's is.

log = logging.getLogger("stnbench")


def label_text(target: torch.Tensor, num_classes: int, end_class: int | None = None) -> str:
    """Sequences read left to right ("3 1 4"; of variable length: the digits before the end class); sums
    (addition) as "sum 7"; digits as themselves."""
    if target.dim() > 0:
        from stnbench.metrics import read

        return " ".join(str(value) for value in read(target, end_class))
    return f"sum {int(target)}" if num_classes > 10 else str(int(target))


def side_by_side(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, C*W + gaps]: every channel shown, separated by a thin bright line."""
    import torch

    if images.shape[1] == 1:
        return images[:, 0]
    gap = torch.full_like(images[:, 0, :, :1], 0.5)
    pieces = [piece for channel in images.unbind(1) for piece in (channel, gap)]
    return torch.cat(pieces[:-1], -1)


def draw_gallery(images: torch.Tensor, targets: torch.Tensor, num_classes: int, title: str,
                 path: Path, end_class: int | None = None) -> Path:
    """Write a grid of ``images`` [B, C, H, W] in [0, 1] with their labels as titles to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = side_by_side(images.cpu())
    columns = min(8, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    aspect = pictures.shape[2] / pictures.shape[1]
    figure, axes = plt.subplots(rows, columns, figsize=(1.5 * columns * aspect, 1.7 * rows), squeeze=False)
    for number, axis in enumerate(axes.flat):
        axis.axis("off")
        if number < len(pictures):
            axis.imshow(pictures[number].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            axis.set_title(label_text(targets[number], num_classes, end_class), fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def gallery(cfg: DictConfig) -> Path:
    if cfg.count <= 0:
        raise ConfigError(f"count must be a positive number of images, got {cfg.count}")
    from stnbench.build import build_datamodule

    datamodule = build_datamodule(cfg.data)
    images, targets = datamodule.preview("val", int(cfg.count))
    distortion = datamodule.distortion
    shape = "x".join(map(str, datamodule.image_shape))
    title = f"{datamodule.name}: {shape} images, fixed validation set (seed {cfg.seed})"
    path = draw_gallery(images, targets, distortion.num_classes, title,
                        Path(cfg.paths.run_dir) / f"{datamodule.name}.png", distortion.end_class)
    log.info("Gallery written to %s", path)
    return path


@hydra.main(version_base="1.3", config_path="configs", config_name="gallery")
def hydra_main(cfg: DictConfig) -> None:
    try:
        gallery(cfg)
    except USER_ERRORS as error:
        raise SystemExit(f"stnbench-gallery: error: {error}") from None


def main() -> None:
    """The stnbench-gallery command (a fast ``--help``, see stnbench.cli_help)."""
    run_command("gallery", hydra_main)


if __name__ == "__main__":
    main()
