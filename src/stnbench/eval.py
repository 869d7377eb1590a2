"""stnbench-eval: test a checkpoint on its benchmark's fixed test set and write eval_results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from stnbench import viz
from stnbench.build import (
    CONFIG_KEY,
    USER_ERRORS,
    build_datamodule,
    build_model,
    build_trainer,
    load_checkpoint,
    load_weights,
    parameter_count,
    write_json,
)
from stnbench.cli_help import run_command
from stnbench.errors import CheckpointError
from stnbench.identity import Run, differences
from stnbench.module import STNBenchModule
from stnbench.run_folder import remove_if_empty

log = logging.getLogger("stnbench")


def evaluate(cfg: DictConfig) -> dict:
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
    # The checkpoint decides data and model; this machine decides where data and caches live.
    data_cfg = cfg.data if cfg.get("data") else trained.data
    data_cfg = OmegaConf.merge(data_cfg, {"root": cfg.paths.data_dir, "cache_dir": cfg.paths.cache_dir,
                                          "seed": trained.seed if cfg.seed is None else cfg.seed})
    datamodule = build_datamodule(data_cfg)
    module = STNBenchModule(build_model(trained.model, datamodule), optimizer=None,
                            num_classes=datamodule.distortion.num_classes, seed=int(data_cfg.seed))
    load_weights(module, checkpoint["state_dict"], cfg.ckpt_path)

    trainer = build_trainer(cfg.trainer, loggers=[], callbacks=[])
    start = time.perf_counter()
    tested = trainer.test(module, datamodule=datamodule)[0]
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
    log.info("Results: %s", results)
    return results


def save_transformer_picture(module: STNBenchModule, datamodule, path: Path, count: int = 16) -> Path | None:
    """The TensorBoard picture (inputs with glimpse outlines, then the glimpses) for a few test images,
    as a PNG. Models without a spatial transformer have nothing to show: returns None."""
    images, _ = datamodule.preview("test", count)
    module.eval()
    grid = viz.model_picture(module.model, images, module.device, upscale=3)
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
