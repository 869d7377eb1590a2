"""Is data generation ever the bottleneck? Images/second for rendering training batches of every
suite dataset (the data module's own render path) next to images/second at which the CNN-STN trains on
them (forward + backward + Adam step), in one process on this machine.

    STNBENCH_DATA_DIR=/path/to/data python scripts/bench_data.py --threads 1

Generation must be >= 5x faster than training for every dataset; the script exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from stnbench.build import build_datamodule, build_model
from stnbench.data.datamodule import derive_seed

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DATASETS = ("projective", "elastic", "translated", "cluttered", "multi_digit", "addition")
REQUIRED_RATIO = 5.0


def per_second(step, images_per_step: int, min_seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        step(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds or steps < 3:
        step(steps + 1)
        steps += 1
    return steps * images_per_step / (time.perf_counter() - start)


def bench(name: str, batch_size: int, seconds: float, cache_dir: str) -> tuple[float, float]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}", "model=st_cnn"])
    with open_dict(cfg):
        cfg.data.root, cfg.data.cache_dir = cfg.paths.data_dir, cache_dir
        cfg.data.batch_size = batch_size
    datamodule = build_datamodule(cfg.data)  # also renders the fixed val/test sets once (not timed)
    pool_size = len(datamodule.pools["train"])

    def describe(number: int) -> dict:
        generator = torch.Generator().manual_seed(number)
        return {"split": "train", "index": torch.randint(pool_size, (batch_size,), generator=generator),
                "seed": derive_seed("bench", name, number)}

    generate = per_second(lambda n: datamodule.materialize(describe(n)), batch_size, seconds)

    model = build_model(cfg.model, datamodule)  # num_steps = sequence_length (T for multi_digit)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, targets = datamodule.materialize(describe(0))
    targets = targets if targets.dim() == 2 else targets[:, None]

    def train_step(_: int) -> None:
        logits = model(images).logits[:, -targets.shape[1]:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return generate, per_second(train_step, batch_size, seconds, warmup=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing window per measurement")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as cache_dir:
        for name in args.datasets:
            generate, train = bench(name, args.batch_size, args.seconds, cache_dir)
            ratio = generate / train
            ok &= ratio >= REQUIRED_RATIO
            rows.append(f"| {name} | {generate:,.0f} | {train:,.0f} | {ratio:,.1f}x |")
            print(f"{name}: generate {generate:,.0f} img/s, train {train:,.0f} img/s", file=sys.stderr)
    print(f"\nbatch {args.batch_size}, {args.threads} thread(s), {torch.__version__}, CPU\n")
    print("| dataset | generate (img/s) | train st_cnn (img/s) | generate / train |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    if not ok:
        print(f"\nFAIL: generation is less than {REQUIRED_RATIO}x faster than training somewhere")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
