"""Glimpse pictures for a report: where each finished model looks, on the same test images for all.

``write_glimpse_pictures(run_dirs, out_dir)`` loads every run's ``checkpoints/best.ckpt`` and draws, for one
fixed set of test images, each glimpse's outline on the input in step order (colour = step; later steps
on top) beside the glimpses themselves, under the image's true label and the model's prediction, with the
run's name and model on top: ``viz.labelled_model_picture``, the picture TensorBoard shows per validation
epoch. The images are the fixed test set of the first run's data (its seed unless ``seed`` is given), so
every model is shown the same images; runs whose test images differ (``stnbench.identity.test_images``) are
refused. Pictures only read MNIST: they never download it, and never render a run's fixed training set.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision.utils import save_image

from stnbench import viz
from stnbench.build import build_datamodule
from stnbench.errors import CheckpointError, ConfigError
from stnbench.identity import flatten, test_images
from stnbench.predict import load_model
from stnbench.records import best_checkpoint, is_finished, read_results
from stnbench.source import Source


def run_config(run_dir: Path) -> dict:
    """The resolved config a run trained with, from its ``.hydra/config.yaml`` (written resolved by stnbench)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a stnbench run folder: no .hydra/config.yaml; pass the "
                              "folders of finished runs (each with checkpoints/best.ckpt)")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if "data" not in config:
        raise CheckpointError(f"'{path}' has no data config; it was not written by stnbench-train")
    return config


def reference_images(run_dirs: Iterable[str | Path], count: int = 8, seed: int | None = None,
                     data_root: str | Path | None = None, cache_dir: str | Path | None = None) -> torch.Tensor:
    """The first ``count`` images of the fixed test set of the runs' (common) data, [N, C, H, W].

    ``data_root`` / ``cache_dir`` default to STNBENCH_DATA_DIR / STNBENCH_CACHE_DIR, else the ones the first
    run used."""
    return reference_batch(run_dirs, count, seed, data_root, cache_dir)[0]


def reference_batch(run_dirs: Iterable[str | Path], count: int = 8, seed: int | None = None,
                    data_root: str | Path | None = None,
                    cache_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference_images`` and their labels ([N], or [N, T] for digit sequences)."""
    return reference_inputs(run_dirs, count, seed, data_root, cache_dir)[:2]


def reference_inputs(run_dirs: Iterable[str | Path], count: int = 8, seed: int | None = None,
                     data_root: str | Path | None = None,
                     cache_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor, Source | None]:
    """``reference_batch`` and the images' :class:`~stnbench.source.Source` (data=perturbed; else None)."""
    runs = [Path(run) for run in run_dirs]
    if not runs:
        raise ConfigError("no run folders given: pass the folders of finished runs")
    if count < 1:
        raise ConfigError(f"count must be a positive number of images, got {count}")
    first = run_config(runs[0])
    for run in runs[1:]:
        ours, theirs = flatten(test_images(first)), flatten(test_images(run_config(run)))
        if ours != theirs:
            keys = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
            raise ConfigError(f"run '{run}' was trained on other data than '{runs[0]}' (data keys {keys} differ); "
                              "glimpse pictures compare models on the same images: pass runs of one data config")
    data = dict(first["data"])
    data_root = data_root or os.environ.get("STNBENCH_DATA_DIR")
    cache_dir = cache_dir or os.environ.get("STNBENCH_CACHE_DIR")
    if data_root is not None:
        data["root"] = str(data_root)
        if isinstance(data.get("distortion"), dict) and "root" in data["distortion"]:
            data["distortion"] = {**data["distortion"], "root": str(data_root)}
    if cache_dir is not None:
        data["cache_dir"] = str(cache_dir)
    if seed is not None:
        data["seed"] = int(seed)
    # Only the test set is needed: read MNIST where it is, and leave the training set unrendered.
    data.update({"download": False, "train_mode": "fresh", "train_size": None})
    datamodule = build_datamodule(data)
    return (*datamodule.preview("test", count), datamodule.preview_source("test", count))


def end_class_of(run: Path) -> int | None:
    """The end class of a run's data (sequences of variable length), from its config, without building the data."""
    from hydra.utils import get_class

    try:
        target = run_config(run)["data"]["distortion"]["_target_"]
        return getattr(get_class(target), "end_class", None)
    except (CheckpointError, KeyError, TypeError, ImportError, ValueError):
        return None


def model_title(run: Path, name: str) -> str:
    """The picture's title: the run (its name in the report) and its model, from its results.json."""
    results = read_results(run) or {}
    model, transform = results.get("choice/model"), results.get("choice/transform")
    label = f"{model}-{transform}" if model and transform else model
    return f"{name} (model {label})" if label else name


def write_glimpse_pictures(run_dirs: Iterable[str | Path], out_dir: str | Path, count: int = 8,
                           images: torch.Tensor | None = None, upscale: int = 3,
                           names: Mapping[Path, str] | None = None, targets: torch.Tensor | None = None,
                           source: Source | None = None, **image_options) -> dict[str, Path | None]:
    """One PNG per run, ``<out_dir>/<name>.png`` (``names``: run folder -> file name, default the folder's
    name): the run's name and model on top, then per image the input with each glimpse's outline in step
    order and the glimpses, under the true label and the model's prediction. Returns {name: PNG path, or None
    for a model without a spatial transformer (nothing to draw)}. ``images`` (and their labels ``targets``)
    default to ``reference_batch`` (``image_options``: seed, data_root, cache_dir), and their ``source`` too
    (the clean digits, for models that start from them)."""
    runs = [Path(run) for run in run_dirs]
    if images is None:
        images, targets, source = reference_inputs(runs, count, **image_options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = {}
    for run in runs:
        name = (names or {}).get(run, run.name)
        grid = viz.labelled_model_picture(load_model(best_checkpoint(run)), images, targets, "cpu", upscale=upscale,
                                          title=model_title(run, name), end_class=end_class_of(run),
                                          source=source)
        if grid is None:
            written[name] = None
            continue
        path = out / f"{name}.png"
        save_image(grid, path)
        logging.getLogger("stnbench").info("Wrote %s", path)
        written[name] = path
    return written


def finished_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (a sweep or outputs folder) whose results.json says ``finished``."""
    return [path.parent for path in sorted(Path(root).rglob("results.json"))
            if is_finished(read_results(path.parent)) and best_checkpoint(path.parent).is_file()]


def picture_name(run: Path, root: Path) -> str:
    """A run's picture is named by its folder's path under the report's root, so runs of the same name in two
    sweeps never overwrite each other's picture."""
    relative = run.relative_to(root) if run != root else Path(run.name)
    return "__".join(relative.parts)


def write_sweep_glimpse_pictures(root: str | Path, out_dir: str | Path | None = None, count: int = 8,
                                 **image_options) -> dict[str, Path | None]:
    """``write_glimpse_pictures`` for a whole sweep: its finished runs grouped by their test images, one seed
    per group (the lowest), so each model of a data setting is shown once, on that setting's images.
    PNGs go to ``<root>/glimpses`` unless ``out_dir`` is given."""
    root = Path(root)
    groups: dict[str, list[tuple[int, Path]]] = {}
    for run in finished_runs(root):
        config = run_config(run)
        key = json.dumps(flatten(test_images(config)), sort_keys=True, default=str)
        groups.setdefault(key, []).append((int(config["data"].get("seed") or 0), run))
    written: dict[str, Path | None] = {}
    for members in groups.values():
        lowest = min(seed for seed, _ in members)
        runs = [run for seed, run in members if seed == lowest]
        names = {run: picture_name(run, root) for run in runs}
        written.update(write_glimpse_pictures(runs, out_dir or root / "glimpses", count, names=names,
                                              **image_options))
    return written
