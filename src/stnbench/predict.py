"""Checkpoints as products: ``load_model(ckpt)`` and ``stnbench-predict ckpt_path=... input=...``.

A stnbench checkpoint carries the config that made it (``module.CONFIG_KEY``), so the model is rebuilt
from it without MNIST or the data module: only the distortion is instantiated, for the input shape and
the number of classes and digits. Inputs are what the benchmark feeds the model: one grey channel, digit
bright on a black background, values in [0, 1] (uint8 images are divided by 255), of the model's size.
"""

from __future__ import annotations

import csv
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stnbench.cli_help import run_command
from stnbench.errors import USER_ERRORS, ConfigError
from stnbench.records import CONFIG_KEY, load_checkpoint

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported where a function uses it, not with this module: a mistyped stnbench-predict command line
# is answered before torch loads (tests/test_messages.py).
log = logging.getLogger("stnbench")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class LoadedModel:
    """A checkpoint's model in eval mode plus what inference needs to know about its data."""

    model: nn.Module
    config: dict
    input_shape: tuple[int, int, int]
    num_classes: int
    sequence_length: int | None  # digits per image for sequence data (+ the end step), else None
    end_class: int | None = None  # the class that ends a sequence of variable length, else None


def load(ckpt_path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a checkpoint's model from its stored config and load its weights."""
    checkpoint = load_checkpoint(ckpt_path)
    config = checkpoint[CONFIG_KEY]
    if not config or "model" not in config or "data" not in config:
        raise ConfigError(f"checkpoint '{ckpt_path}' stores no model/data config; it was not written by "
                          "stnbench-train")
    distortion = instantiate(OmegaConf.create(config["data"]["distortion"]))
    input_shape = (distortion.channels, distortion.image_size, distortion.image_size)
    sequence_length = distortion.sequence_length
    model = instantiate(OmegaConf.create(config["model"]), input_shape=input_shape,
                        num_classes=distortion.num_classes, num_steps=sequence_length or 1)
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"checkpoint '{ckpt_path}' weights do not fit its own model config: {error}") from None
    model.to(device).eval()
    return LoadedModel(model, config, input_shape, distortion.num_classes, sequence_length, distortion.end_class)


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a stnbench checkpoint, in eval mode, ready for inference.

    ``model(images)`` takes float images [B, C, H, W] in [0, 1] and returns a ``ModelOutput`` (logits per
    step, and for spatial transformers the thetas and warped glimpses)."""
    return load(ckpt_path, device).model


def labels_from_logits(logits: torch.Tensor, sequence_length: int | None, end_class: int | None = None) -> list[str]:
    """Predicted label per image: the last step's class, or the digit string of a sequence model (with an end
    class: the first ``sequence_length`` steps, read up to the first end class)."""
    from stnbench.metrics import read

    if sequence_length:
        steps = logits[:, :sequence_length] if end_class is not None else logits[:, -sequence_length:]
        return ["".join(str(d) for d in read(row, end_class)) for row in steps.argmax(-1)]
    return [str(int(c)) for c in logits[:, -1].argmax(-1)]


# ---- inputs ----------------------------------------------------------------------------------------
def _as_float(array: np.ndarray, source: str) -> torch.Tensor:
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    tensor = tensor.float()
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ConfigError(f"input '{source}': float values must lie in [0, 1] (got {float(tensor.min()):.3g} to "
                          f"{float(tensor.max()):.3g}); pass uint8 0-255 or scale to [0, 1]")
    return tensor


def _read_image(path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"input '{path}' is not a readable image ({type(error).__name__}); pass PNG/JPEG/BMP "
                          "files, a folder of them, or a .npy array") from None
    return _as_float(pixels, str(path))[None]  # [1, H, W]


def read_inputs(source: str | Path, input_shape: tuple[int, int, int]) -> tuple[list[str], torch.Tensor]:
    """(names, images [N, C, H, W]) from a .npy file, one image file, or a folder of image files."""
    import torch

    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"input '{path}': folder holds no {'/'.join(IMAGE_SUFFIXES)} files")
        names, images = [p.name for p in files], [_read_image(p) for p in files]
        shapes = {tuple(i.shape) for i in images}
        if len(shapes) > 1:
            raise ConfigError(f"input '{path}': images have different sizes {sorted(shapes)}; give them one size")
        batch = torch.stack(images)
    elif path.suffix.lower() == ".npy" and path.is_file():
        array = np.load(path)
        batch = _as_float(array, str(path))
        batch = {2: lambda b: b[None, None], 3: lambda b: b[:, None], 4: lambda b: b}.get(
            batch.dim(), lambda b: None)(batch)
        if batch is None:
            raise ConfigError(f"input '{path}': expected an array [H, W], [N, H, W] or [N, C, H, W], got shape "
                              f"{list(array.shape)}")
        names = [f"{path.name}[{i}]" for i in range(len(batch))]
    elif path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        names, batch = [path.name], _read_image(path)[None]
    else:
        raise ConfigError(f"input '{path}' is not a .npy file, an image ({', '.join(IMAGE_SUFFIXES)}) or a folder "
                          "of images")
    if tuple(batch.shape[1:]) != tuple(input_shape):
        raise ConfigError(f"input '{path}': images are {list(batch.shape[1:])} (C, H, W) but the model takes "
                          f"{list(input_shape)}; give images of the size of the data it was trained on")
    return names, batch


# ---- prediction ------------------------------------------------------------------------------------
def predict(loaded: LoadedModel, images: torch.Tensor, batch_size: int = 256) -> tuple[list[str], torch.Tensor,
                                                                                           torch.Tensor | None]:
    """(labels, confidence of each label, glimpses [N, S, C, h, w] or None) for images [N, C, H, W]."""
    import torch

    device = next(loaded.model.parameters()).device
    labels, confidences, glimpses = [], [], []
    for start in range(0, len(images), batch_size):
        with torch.no_grad():
            output = loaded.model(images[start:start + batch_size].to(device))
        steps = loaded.sequence_length or 1
        read_steps = output.logits[:, :steps] if loaded.end_class is not None else output.logits[:, -steps:]
        chance, chosen = read_steps.softmax(-1).max(-1)
        labels += labels_from_logits(output.logits, loaded.sequence_length, loaded.end_class)
        if loaded.end_class is not None:  # the steps a model's answer is read from: up to its first end class
            from stnbench.metrics import first_end

            said = torch.arange(chance.shape[1], device=device) <= first_end(chosen, loaded.end_class)[:, None]
            chance = torch.where(said, chance, torch.ones_like(chance))
        confidences.append(chance.prod(-1).cpu())  # a sequence is right only if all digits are
        if output.glimpses is not None:
            glimpses.append(output.glimpses.cpu())
    return labels, torch.cat(confidences), (torch.cat(glimpses) if glimpses else None)


def glimpse_file_names(names: list[str]) -> list[str]:
    """A distinct ``<name>_glimpses.png`` per input: ``digit07.png`` -> ``digit07_glimpses.png``, the i-th image
    of ``batch.npy`` -> ``batch_<i>_glimpses.png`` (i zero-padded, so the files sort in batch order). Inputs
    whose stems clash (``a.png`` and ``a.jpg``) keep their suffix (``a_png``, ``a_jpg``); any clash left over
    (names differing only in case, for case-insensitive file systems) gets ``-2``, ``-3``, ..."""
    width = len(str(max(len(names) - 1, 0)))

    def stem(name: str) -> str:
        item = re.fullmatch(r"(.*)\[(\d+)\]", name)  # the i-th image of an array file: "batch.npy[3]"
        base = f"{Path(item[1]).stem}_{int(item[2]):0{width}d}" if item else Path(name).stem
        return re.sub(r"[^\w.-]", "_", base) or "image"

    stems = [stem(name) for name in names]
    counts = Counter(s.lower() for s in stems)
    stems = [re.sub(r"[^\w-]", "_", name) if counts[s.lower()] > 1 else s for s, name in zip(stems, names, strict=True)]
    taken: set[str] = set()
    files = []
    for base in stems:
        candidate, number = base, 1
        while candidate.lower() in taken:
            number += 1
            candidate = f"{base}-{number}"
        taken.add(candidate.lower())
        files.append(f"{candidate}_glimpses.png")
    return files


def save_glimpses(folder: Path, names: list[str], inputs: torch.Tensor, glimpses: torch.Tensor) -> list[Path]:
    """One PNG per image (see :func:`glimpse_file_names`): the input, then each glimpse the transformer sampled,
    upscaled to the input's size."""
    import torch
    from torchvision.utils import save_image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file, image, views in zip(glimpse_file_names(names), inputs, glimpses, strict=True):
        height, width = image.shape[-2:]
        views = torch.nn.functional.interpolate(views, size=(height, width), mode="nearest")
        path = folder / file
        save_image(torch.cat([image[None], views]).clamp(0, 1), path, nrow=len(views) + 1, padding=2, pad_value=0.5)
        written.append(path)
    return written


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    loaded = load(cfg.ckpt_path, cfg.get("device", "cpu"))
    names, images = read_inputs(cfg.input, loaded.input_shape)
    if getattr(loaded.model, "reads_source", False):
        log.warning("this model trained from each image's clean digit and the warp that made it "
                    "(model.from_source=true); images of your own come without them, so it starts from the image "
                    "at the identity, as it never did in training")
    labels, confidence, glimpses = predict(loaded, images, int(cfg.get("batch_size", 256)))
    rows = [{"input": n, "label": label, "confidence": round(float(c), 4)}
            for n, label, c in zip(names, labels, confidence, strict=True)]
    if cfg.get("output"):
        output = Path(cfg.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["input", "label", "confidence"])
            writer.writeheader()
            writer.writerows(rows)
        log.info("Wrote %d predictions to %s", len(rows), output)
    else:
        for row in rows:
            print(f"{row['input']}\t{row['label']}\t{row['confidence']:.4f}")
    if cfg.get("glimpses"):
        if glimpses is None:
            raise ConfigError(f"glimpses={cfg.glimpses}: model '{loaded.config['model'].get('_target_')}' has no "
                              "spatial transformer, so there are no glimpses to write; drop glimpses=")
        written = save_glimpses(Path(cfg.glimpses), names, images, glimpses)
        log.info("Wrote %d glimpse pictures to %s", len(written), cfg.glimpses)
    return rows


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except USER_ERRORS as error:
        raise SystemExit(f"stnbench-predict: error: {error}") from None
    sys.stdout.flush()


def main() -> None:
    """The stnbench-predict command (a fast ``--help``, see stnbench.cli_help)."""
    run_command("predict", hydra_main)


if __name__ == "__main__":
    main()
