"""What does the framework cost per training step, and how close does training get to this machine's peak?
For every model on its usual dataset, in one process:

* framework / plain: ``stnbench-train``'s own loop (Lightning, the LightningModule, callbacks and logger as a run
  has them; start-up and validation excluded: timed from batch start to batch start) against a plain PyTorch
  loop with the same settings (render the batch with the data module, forward, backward, the run's own
  optimiser and warm-up from the same initial weights, channels_last and the deterministic flag as the run
  has them: the weights a loop reaches change the warps and so the sampler's cost). The two are interleaved,
  one of each per round, over ``--rounds`` rounds; the table gives the median img/s of each, the median of
  the per-round ratios and their spread (min - max), because two single measurements on a 2-core machine
  can differ by 30 %;
* MFLOP per image (forward + backward, torch's FlopCounterMode) and the share of a matmul peak measured
  in the same process (fp32 2048x2048 ``torch.mm``);
* ``--variants``: the plain loop with channels_last, a fused Adam and both, against the plain loop.

    STNBENCH_DATA_DIR=/path/to/data python scripts/bench_train.py --threads 2
    python scripts/bench_train.py --models st_cnn:rts,st_cnn:cluttered --rounds 9    # model:data pairs

Run it on a quiet machine (``uptime``): the ratios are meaningful under load, absolute numbers are not.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.utils.flop_counter import FlopCounterMode

from stnbench.build import build_datamodule, build_model, build_module, build_trainer
from stnbench.data.datamodule import derive_seed
from stnbench.module import step_logits

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# model:data -> extra overrides: each model on the dataset it is usually run on
MODELS = {
    "fcn:rts": [],
    "cnn:rts": [],
    "st_fcn:rts": [],
    "st_cnn:rts": [],
    "st_cnn:cluttered": [],
    "rnn_stn:multi_digit": ["schedule=seed_hypothesis"],  # the CPU-sized task: 2 digits on 60x60
    "recurrent_stn:multi_digit": ["schedule=seed_hypothesis"],
}
OVERRIDES: list[str] = []  # --overrides: applied to the framework loop's config (e.g. the "before" defaults)


DEVICE = torch.device("cpu")
AUTOCAST: torch.dtype | None = None  # bf16-mixed: forward and loss under autocast (the sampler stays fp32)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(seconds: float = 2.0, size: int = 2048) -> float:
    """fp32 GFLOP/s of a large matrix product on the benchmark device (CPU: with the current thread count)."""
    a, b = torch.randn(size, size, device=DEVICE), torch.randn(size, size, device=DEVICE)
    torch.mm(a, b)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    sync()
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def compose_cfg(pair: str, batch_size: int, cache_dir: str):
    model, _, data = pair.partition(":")
    extra = MODELS.get(pair, [])
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={data}", f"model={model}", *extra, *OVERRIDES],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # as @hydra.main does: the run's name resolves
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.data.root, cfg.data.cache_dir = cfg.paths.data_dir, cache_dir
        cfg.data.batch_size = batch_size
        cfg.data.num_val = 1000
        cfg.paths.run_dir = tempfile.mkdtemp(prefix="bench_train_")
    return cfg


def loss_of(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.autocast(DEVICE.type, dtype=AUTOCAST or torch.float32, enabled=AUTOCAST is not None):
        logits = step_logits(model(images), targets)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def plain_loop(model: torch.nn.Module, batch: Callable[[int], tuple], steps: int, channels_last: bool = False,
               fused: bool = False, optimizer=None, scheduler=None) -> float:
    """img/s of render + forward + backward + optimiser step (Adam at 1e-4 unless given one, and its per-step
    scheduler), after 3 warm-up steps."""
    model = model.to(DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused or None)
    images_per_step = 0

    def step(number: int) -> None:
        nonlocal images_per_step
        images, targets = batch(number)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, images, targets).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        images_per_step = len(images)

    for number in range(3):
        step(number)
    sync()
    start = time.perf_counter()
    for number in range(steps):
        step(3 + number)
    sync()
    return steps * images_per_step / (time.perf_counter() - start)


class BatchTimer:
    """Wall time from one training batch's start to the next's: the steady state, without start-up or
    validation (Lightning runs no validation here)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        sync()
        self.starts.append(time.perf_counter())


def framework_loop(cfg, steps: int) -> float:
    """img/s of stnbench's own training loop: Lightning, the LightningModule, the run's default callbacks
    (checkpointing, LR monitor, epoch line, divergence guard, safe stops) and its logger, as stnbench-train
    builds them; only validation is off (it is not part of a training step)."""
    import lightning as L

    from stnbench.build import instantiate_group
    from stnbench.callbacks import DivergenceGuard, SafeStops

    datamodule = build_datamodule(cfg.data)
    torch.manual_seed(0)  # the plain loop's initial weights
    module = build_module(cfg, datamodule)
    timer = BatchTimer()
    callback = type("Timer", (L.Callback,), {"on_train_batch_start": timer.on_train_batch_start})()
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.max_steps = -1
        cfg.trainer.limit_train_batches = steps + 4
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.callbacks.model_summary = None
        cfg.trainer.accelerator = "gpu" if DEVICE.type == "cuda" else "cpu"
        cfg.trainer.precision = "bf16-mixed" if AUTOCAST is not None else "32-true"
    callbacks = [*instantiate_group(cfg.callbacks, "callbacks"), SafeStops(None, cfg.paths.run_dir), DivergenceGuard(),
                 callback]
    trainer = build_trainer(cfg.trainer, loggers=instantiate_group(cfg.logger, "logger"), callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule)
    times = timer.starts[3:]  # the first batches warm up
    return (len(times) - 1) * cfg.data.batch_size / (times[-1] - times[0])


def flops_per_image(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        loss_of(model, images, targets).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(images)


def bench(pair: str, batch_size: int, steps: int, cache_dir: str, peak: float, rounds: int, variants: bool) -> dict:
    cfg = compose_cfg(pair, batch_size, cache_dir)
    datamodule = build_datamodule(cfg.data)
    pool = len(datamodule.pools["train"])

    def batch(number: int) -> tuple:
        generator = torch.Generator().manual_seed(number)
        index = torch.randint(pool, (batch_size,), generator=generator).to(DEVICE)  # rendered on DEVICE
        return datamodule.materialize({"split": "train", "seed": derive_seed("bench", number), "index": index})

    def plain(**options) -> float:
        torch.manual_seed(0)
        return plain_loop(build_model(cfg.model, datamodule), batch, steps, **options)

    def plain_as_run() -> float:
        """The plain loop with everything a step computes set as the run sets it: the same initial weights,
        optimiser groups, learning rates and warm-up (the weights it reaches change the warps, and with them
        the sampler's cost), channels_last, and the trainer's deterministic-algorithms flag."""
        torch.manual_seed(0)
        module = build_module(cfg, datamodule)
        optimizer, scheduler = module.make_optimizer(steps + 4)  # the framework loop's length
        deterministic = cfg.trainer.get("deterministic")
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
        try:
            return plain_loop(module.model, batch, steps, channels_last=module.channels_last, optimizer=optimizer,
                              scheduler=scheduler)
        finally:
            torch.use_deterministic_algorithms(False)

    torch.manual_seed(0)
    flops = flops_per_image(build_model(cfg.model, datamodule).to(DEVICE), *batch(0))
    row = {"model": pair.partition(":")[0], "data": cfg.data.name, "MFLOP/img": flops / 1e6}
    # like with like: the plain loop with the framework's own settings, one of each per round
    plains, frameworks = [], []
    for _ in range(rounds):
        plains.append(plain_as_run())
        frameworks.append(framework_loop(cfg.copy(), steps))
    ratios = [f / p for f, p in zip(frameworks, plains, strict=True)]
    row["plain img/s"], row["framework img/s"] = statistics.median(plains), statistics.median(frameworks)
    row["framework / plain"] = statistics.median(ratios)
    row["spread"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
    row["% of peak"] = 100 * row["framework img/s"] * flops / (peak * 1e9)
    if variants:
        options = {"channels_last": {"channels_last": True}, "fused Adam": {"fused": True},
                   "both": {"channels_last": True, "fused": True}}
        runs: dict[str, list[float]] = {"plain": [], **{name: [] for name in options}}
        for _ in range(rounds):  # interleaved: order and warm-up effects cancel out
            runs["plain"].append(plain())
            for name, option in options.items():
                runs[name].append(plain(**option))
        for name in options:
            row[f"{name} / plain"] = statistics.median(runs[name]) / statistics.median(runs["plain"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model:data pairs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of plain and framework (median)")
    parser.add_argument("--variants", action="store_true", help="also time channels_last / fused Adam variants")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for the framework loop, e.g. "
                        "channels_last=false optimizer.fused=false (the defaults before the fast path)")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    global DEVICE, AUTOCAST
    OVERRIDES.extend(args.overrides)
    DEVICE = torch.device(args.device)
    AUTOCAST = torch.bfloat16 if args.precision == "bf16-mixed" else None
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    peak = matmul_peak()
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, {args.precision}, fp32 matmul peak {peak:.1f} GFLOP/s, "
          f"batch {args.batch_size}, {args.steps} timed steps x {args.rounds} rounds, framework overrides: "
          f"{' '.join(OVERRIDES) or 'none'}")
    columns = ["model", "data", "MFLOP/img", "plain img/s", "framework img/s", "framework / plain", "spread",
               "% of peak"] + (["channels_last / plain", "fused Adam / plain", "both / plain"] if args.variants else [])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    with tempfile.TemporaryDirectory() as cache_dir:
        for model in args.models.split(","):
            row = bench(model, args.batch_size, args.steps, cache_dir, peak, args.rounds, args.variants)
            cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
