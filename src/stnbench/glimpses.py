"""Glimpse pictures for a report: where each finished model looks, on the same test images for all.

``write_glimpse_pictures(run_dirs, out_dir)`` loads every run's ``checkpoints/best.ckpt`` and draws, for one
fixed set of test images, each glimpse's outline on the input in step order (colour = step; later steps
on top) beside the glimpses themselves: ``viz.model_picture``, the picture TensorBoard shows per
validation epoch. The images are the fixed test set of the first run's data config (its seed unless
``seed`` is given), so every model is shown the same images; runs on other data are refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision.utils import save_image

from stnbench import viz
from stnbench.build import build_datamodule
from stnbench.errors import CheckpointError, ConfigError
from stnbench.predict import load_model

log = logging.getLogger("stnbench")
# Where data and caches live, the seed (the images come from one seed) and how training batches are drawn:
# none of them changes which data a model was trained for.
NOT_DATA_KEYS = ("root", "cache_dir", "seed", "download", "verify_checksums", "batch_size", "eval_batch_size",
                 "overfit_batches", "train_mode")


def run_data_config(run_dir: Path) -> dict:
    """The data config a run trained on, from its ``.hydra/config.yaml`` (written resolved by stnbench)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a stnbench run folder: no .hydra/config.yaml; pass the "
                              "folders of finished runs (each with checkpoints/best.ckpt)")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if "data" not in config:
        raise CheckpointError(f"'{path}' has no data config; it was not written by stnbench-train")
    return config["data"]


def _comparable(data: dict) -> dict[str, object]:
    """The data config as flat dotted keys, without the machine keys (and the distortion's data root)."""
    flat = {f"distortion.{k}": v for k, v in data.get("distortion", {}).items() if k != "root"}
    return {**flat, **{k: v for k, v in data.items() if k not in (*NOT_DATA_KEYS, "distortion")}}


def reference_images(run_dirs: Iterable[str | Path], count: int = 8, seed: int | None = None,
                     data_root: str | Path | None = None, cache_dir: str | Path | None = None) -> torch.Tensor:
    """The first ``count`` images of the fixed test set of the runs' (common) data config, [N, C, H, W].

    ``data_root`` / ``cache_dir`` default to the ones the first run used (give them on another machine)."""
    runs = [Path(run) for run in run_dirs]
    if not runs:
        raise ConfigError("no run folders given: pass the folders of finished runs")
    if count < 1:
        raise ConfigError(f"count must be a positive number of images, got {count}")
    reference = run_data_config(runs[0])
    for run in runs[1:]:
        ours, theirs = _comparable(reference), _comparable(run_data_config(run))
        if ours != theirs:
            keys = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
            raise ConfigError(f"run '{run}' was trained on other data than '{runs[0]}' (data keys {keys} differ); "
                              "glimpse pictures compare models on the same images: pass runs of one data config")
    data = dict(reference)
    if data_root is not None:
        data["root"] = str(data_root)
        if isinstance(data.get("distortion"), dict) and "root" in data["distortion"]:
            data["distortion"] = {**data["distortion"], "root": str(data_root)}
    if cache_dir is not None:
        data["cache_dir"] = str(cache_dir)
    if seed is not None:
        data["seed"] = int(seed)
    images, _ = build_datamodule(data).preview("test", count)
    return images


def write_glimpse_pictures(run_dirs: Iterable[str | Path], out_dir: str | Path, count: int = 8,
                           images: torch.Tensor | None = None, upscale: int = 3,
                           **image_options) -> dict[str, Path | None]:
    """One PNG per run, ``<out_dir>/glimpses_<run folder name>.png``: a row per image, the input with each
    glimpse's outline in step order, then the glimpses. Returns {run folder name: PNG path, or None for a
    model without a spatial transformer (nothing to draw)}. ``images`` default to ``reference_images``
    (``image_options``: seed, data_root, cache_dir)."""
    runs = [Path(run) for run in run_dirs]
    if images is None:
        images = reference_images(runs, count, **image_options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = {}
    for run in runs:
        model = load_model(run / "checkpoints" / "best.ckpt")
        grid = viz.model_picture(model, images, "cpu", upscale=upscale)
        if grid is None:
            written[run.name] = None
            continue
        path = out / f"glimpses_{run.name}.png"
        save_image(grid, path)
        log.info("Wrote %s", path)
        written[run.name] = path
    return written


def finished_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (a sweep or outputs folder) whose results.json says ``finished``."""
    runs = []
    for results in sorted(Path(root).rglob("results.json")):
        run = results.parent
        try:
            status = json.loads(results.read_text()).get("status")
        except (OSError, ValueError):
            continue
        if status == "finished" and (run / "checkpoints" / "best.ckpt").is_file():
            runs.append(run)
    return runs


def write_sweep_glimpse_pictures(root: str | Path, out_dir: str | Path | None = None, count: int = 8,
                                 **image_options) -> dict[str, Path | None]:
    """``write_glimpse_pictures`` for a whole sweep: its finished runs grouped by data config, one seed per
    group (the lowest), so each model of a data setting is shown once, on that setting's images.
    PNGs go to ``<root>/glimpses`` unless ``out_dir`` is given."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for run in finished_runs(root):
        data = run_data_config(run)
        groups.setdefault(json.dumps(_comparable(data), sort_keys=True, default=str), []).append(
            (int(data.get("seed", 0)), run))
    written: dict[str, Path | None] = {}
    for members in groups.values():
        lowest = min(seed for seed, _ in members)
        runs = [run for seed, run in members if seed == lowest]
        written.update(write_glimpse_pictures(runs, out_dir or Path(root) / "glimpses", count, **image_options))
    return written
