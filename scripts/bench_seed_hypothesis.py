"""Seconds per training step of each model of experiment=seed_hypothesis, to size the study for this CPU.

A plain loop per model (render a batch with the real data module, forward, the LightningModule's loss,
backward, Adam step), timed after 3 warm-up steps; parameters from the built model. Rough: run it with
``OMP_NUM_THREADS=1`` on a machine nobody else uses, and read ratios rather than absolute numbers.

    OMP_NUM_THREADS=1 STNBENCH_DATA_DIR=/path/to/data python scripts/bench_seed_hypothesis.py --steps 15
    python scripts/bench_seed_hypothesis.py --schedule paper --steps 8   # the full-size task (3 digits, 100x100)
    OMP_NUM_THREADS=1 python scripts/bench_seed_hypothesis.py --experiment sonderby_multi_digit \
        --schedule sonderby_cpu --models sonderby_rnn_spn --steps 20 model.glimpse_feedback=true   # issue 22
    OMP_NUM_THREADS=1 python scripts/bench_seed_hypothesis.py --experiment scattered --schedule none \
        --models recurrent_stn,recurrent_stn_no_feedback,sonderby_rnn_spn --steps 15   # issue 23
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from stnbench.build import build_datamodule, build_model, parameter_count
from stnbench.data.datamodule import derive_seed
from stnbench.models.contract import run_model
from stnbench.module import classification_loss, step_logits

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MODELS = ("cnn", "st_cnn", "rnn_stn", "recurrent_stn", "recurrent_stn_no_feedback")


def compose_cfg(model: str, schedule: str, batch_size: int | None, extra: list[str],
                experiment: str = "seed_hypothesis"):
    schedules = [f"schedule={schedule}"] if schedule != "none" else []
    overrides = [f"experiment={experiment}", f"model={model}", *schedules, *extra]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.data.root, cfg.data.cache_dir = cfg.paths.data_dir, tempfile.mkdtemp(prefix="bench_seed_")
        cfg.data.num_val = 1000
        # each batch rendered on the fly: a fixed training set would first render all of it (minutes), and
        # rendering a batch costs a little more than reading one, so the figures are an upper bound
        cfg.data.train_mode, cfg.data.train_size = "fresh", None
        if batch_size:
            cfg.data.batch_size = batch_size
    return cfg


def seconds_per_step(model_name: str, schedule: str, steps: int, batch_size: int | None,
                     extra: list[str], experiment: str = "seed_hypothesis") -> dict:
    cfg = compose_cfg(model_name, schedule, batch_size, extra, experiment)
    datamodule = build_datamodule(cfg.data)
    pool, size = len(datamodule.pools["train"]), int(cfg.data.batch_size)

    def batch(number: int) -> tuple:
        generator = torch.Generator().manual_seed(number)
        return datamodule.materialize({"split": "train", "seed": derive_seed("bench", number),
                                       "index": torch.randint(pool, (size,), generator=generator)})

    torch.manual_seed(0)
    model = build_model(cfg.model, datamodule)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for number in range(3 + steps):
        start = time.perf_counter()
        images, targets, *source = batch(number)   # data with a source (perturbed) hands a third item
        output = run_model(model, images, source=source[0] if source else None)
        loss = classification_loss(output, targets, step_logits(output, targets))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    timed = times[3:]
    return {"model": model_name, "image": "x".join(map(str, datamodule.image_shape[1:])),
            "batch": size, "parameters": parameter_count(model),
            "s/step": sum(timed) / len(timed), "min s/step": min(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model options")
    parser.add_argument("--experiment", default="seed_hypothesis",
                        help="seed_hypothesis, sonderby_multi_digit, perturbed, ...")
    parser.add_argument("--schedule", default="seed_hypothesis",
                        help="seed_hypothesis (CPU size), paper, ...; none: the experiment's own")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model (after 3 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the schedule's")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. model.glimpses_per_digit=2")
    args = parser.parse_args()
    print("| model | image | batch | parameters | s/step (mean) | s/step (min) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name in args.models.split(","):
        row = seconds_per_step(name, args.schedule, args.steps, args.batch_size, args.overrides, args.experiment)
        print(f"| {row['model']} | {row['image']} | {row['batch']} | {row['parameters']:,} | "
              f"{row['s/step']:.3f} | {row['min s/step']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
