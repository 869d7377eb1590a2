"""stnbench-eval: test a checkpoint on its benchmark's fixed test set and write eval_results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stnbench.cli_help import run_command
from stnbench.console import errors_text, quiet_lightning
from stnbench.errors import USER_ERRORS, CheckpointError, ConfigError
from stnbench.identity import Run, differences
from stnbench.run_folder import remove_if_empty

if TYPE_CHECKING:
    from stnbench.module import STNBenchModule

# torch, Lightning and the models are imported where a command uses them, not with this module: a mistyped
# command line is then answered in about a second (stnbench.cli_help), as stnbench-train's is.

log = logging.getLogger("stnbench")


def evaluate(cfg: DictConfig) -> dict:
    from stnbench.build import (
        CONFIG_KEY,
        build_datamodule,
        build_model,
        build_trainer,
        load_checkpoint,
        load_weights,
        parameter_count,
        write_json,
    )
    from stnbench.module import STNBenchModule

    quiet_lightning()
    if not cfg.get("ckpt_path"):
        raise CheckpointError("no checkpoint to evaluate: pass ckpt_path=<run>/checkpoints/best.ckpt")
    checkpoint = load_checkpoint(cfg.ckpt_path)
    trained = OmegaConf.create(checkpoint[CONFIG_KEY])
    if cfg.get("model") is not None:  # the model comes from the checkpoint; a different one is a mistake
        drift = differences(Run({"model": OmegaConf.to_container(trained.model)}, None),  # None: every key counts
                            Run({"model": OmegaConf.to_container(cfg.model, resolve=True)}, None))
        if drift:
            raise CheckpointError(f"checkpoint '{cfg.ckpt_path}' holds another model than the one given "
                                  f"({'; '.join(drift[:4])}); stnbench-eval takes the model from the checkpoint: "
                                  "drop the model override")
    if cfg.get("data"):
        check_same_images(trained.data, cfg.data, cfg.ckpt_path)
    # The checkpoint decides data and model; this machine decides where data and caches live.
    data_cfg = cfg.data if cfg.get("data") else trained.data
    data_cfg = OmegaConf.merge(data_cfg, {"root": cfg.paths.data_dir, "cache_dir": cfg.paths.cache_dir,
                                          "seed": trained.seed if cfg.seed is None else cfg.seed})
    data_cfg = with_test_count(data_cfg, cfg.get("test_num_digits"))
    datamodule = build_datamodule(data_cfg)
    module = STNBenchModule(build_model(trained.model, datamodule), optimizer=None,
                            num_classes=datamodule.distortion.num_classes, seed=int(data_cfg.seed))
    load_weights(module, checkpoint["state_dict"], cfg.ckpt_path)

    trainer = build_trainer(cfg.trainer, loggers=[], callbacks=[])
    start = time.perf_counter()
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]  # the last line shows the error
    results = {
        "checkpoint": str(cfg.ckpt_path),
        "data": data_cfg.name,
        "seed": int(data_cfg.seed),
        "parameters": parameter_count(module.model),
        "test_seconds": round(time.perf_counter() - start, 1),
        **{key: float(value) for key, value in tested.items()},
    }
    if cfg.get("picture", True):
        picture = save_transformer_picture(module, datamodule, Path(cfg.paths.run_dir) / "transformer.png")
        if picture is not None:
            results["picture"] = str(picture)
    write_json(Path(cfg.paths.run_dir) / "eval_results.json", results)
    log.info("Results on data=%s (error %%): %s; eval_results.json in %s", results["data"], errors_text(results),
             cfg.paths.run_dir)
    return results


def with_test_count(data_cfg: DictConfig, test_num_digits) -> DictConfig:
    """The data config with its test images' digit count replaced (``test_num_digits=[4, 4]``: a model trained on
    1-3 digits read on 4), for data that has one (``data=multi_digit_scattered``)."""
    if test_num_digits is None:
        return data_cfg
    if "test_num_digits" not in (data_cfg.get("distortion") or {}):
        raise ConfigError(f"test_num_digits={test_num_digits}: data={data_cfg.get('name')} has no test digit count "
                          "(data=multi_digit_scattered has); drop test_num_digits")
    return OmegaConf.merge(data_cfg, {"distortion": {"test_num_digits": test_num_digits}})


def images_of(data_cfg: DictConfig) -> tuple[int, int, int, int | None]:
    """(channels, image size, classes, digits per image or None) of a data config, from its distortion alone
    (no MNIST is read)."""
    distortion = instantiate(OmegaConf.create(OmegaConf.to_container(data_cfg.distortion, resolve=True)))
    return distortion.channels, distortion.image_size, distortion.num_classes, distortion.sequence_length


def describe_images(images: tuple[int, int, int, int | None]) -> str:
    channels, size, classes, digits = images
    return f"{channels}x{size}x{size} images, " + (f"sequences of {digits} digits" if digits else f"{classes} classes")


def same_images_options(images: tuple[int, int, int, int | None]) -> list[str]:
    """The shipped data= options whose images a model trained on ``images`` takes."""
    from stnbench.build import CONFIG_DIR

    found = []
    for path in sorted((CONFIG_DIR / "data").glob("[!_]*.yaml")):
        try:
            if images_of(OmegaConf.merge({"root": "."}, OmegaConf.load(path))) == images:
                found.append(path.stem)
        except Exception:  # noqa: BLE001 - a suggestion only: an option that needs more context is left out
            continue
    return found


def check_same_images(trained: DictConfig, asked: DictConfig, ckpt_path: str) -> None:
    """``data=<name>`` must give images of the size (and labels of the kind) the checkpoint's model takes,
    or the command stops with one line saying so, instead of a state_dict size-mismatch dump."""
    try:
        have, want = images_of(trained), images_of(asked)
    except Exception:  # noqa: BLE001 - a data config that does not build: build_datamodule says why
        return
    if have == want:
        return
    others = [name for name in same_images_options(have) if name != trained.get("name")]
    also = f" (shipped: data={', '.join(others)})" if others else ""
    raise CheckpointError(f"checkpoint '{ckpt_path}' was trained on data={trained.get('name')} "
                          f"({describe_images(have)}) but data={asked.get('name')} gives {describe_images(want)}; "
                          f"drop data= to test on its own data, or give data with {describe_images(have)}{also}")


def save_transformer_picture(module: STNBenchModule, datamodule, path: Path, count: int = 16) -> Path | None:
    """The TensorBoard picture (inputs with glimpse outlines, then the glimpses) for a few test images,
    as a PNG. Models without a spatial transformer have nothing to show: returns None."""
    from torchvision.utils import save_image

    from stnbench import viz

    images, _ = datamodule.preview("test", count)
    module.eval()
    grid = viz.model_picture(module.model, images, module.device, upscale=3,
                             source=datamodule.preview_source("test", count))
    if grid is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    log.info("Wrote %s", path)
    return path


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except USER_ERRORS as error:
        run_dir = Path(cfg.paths.run_dir)
        for folder in (run_dir, run_dir.parent, run_dir.parent.parent):  # the empty eval folders Hydra made
            remove_if_empty(folder)
        raise SystemExit(f"stnbench-eval: error: {error}") from None


def main() -> None:
    """The stnbench-eval command (a fast ``--help``, see stnbench.cli_help)."""
    run_command("eval", hydra_main)


if __name__ == "__main__":
    main()
