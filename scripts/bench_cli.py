"""How fast does the command line answer? Wall seconds of `stnbench-train --help`, a typo in a config group,
and bad values (one found by the cheap checks, one by the type checks), each beside a bare Python start-up
measured in the same process (the ratio is what to compare across machines).

    python scripts/bench_cli.py            # best of 3 per command
"""

from __future__ import annotations

import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "stnbench-train --help": [sys.executable, "-m", "stnbench.train", "--help"],
    "stnbench-train model=nope": [sys.executable, "-m", "stnbench.train", "model=nope"],
    "stnbench-train data.batch_size=0": [sys.executable, "-m", "stnbench.train", "data.batch_size=0"],
    "stnbench-train optimizer.lr=nan": [sys.executable, "-m", "stnbench.train", "optimizer.lr=nan"],
    "stnbench-train trainer.max_epochs=abc": [sys.executable, "-m", "stnbench.train", "trainer.max_epochs=abc"],
}


def seconds(command: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    results = {name: seconds(command) for name, command in COMMANDS.items()}
    baseline = results["python -c pass (baseline)"]
    print("| command | seconds (best of 3) | / python start-up |\n|---|---:|---:|")
    for name, value in results.items():
        print(f"| `{name}` | {value:.2f} | {value / baseline:.1f} |")


if __name__ == "__main__":
    main()
