"""The benchmark and GPU-check scripts run to completion (they are not timed here: they print ratios)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, data_root


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu_completes(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "STNBENCH_DATA_DIR": str(data_root()),
           "STNBENCH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu"], env=env, capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(Path(tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "cpu" and summary["paper schedule: seconds per 1,000 iterations"] > 0
    assert any("| st_cnn |" in line for line in summary["bench"]["bench_32-true"])
    assert "packing: 2 runs on one device vs 1 run, throughput ratio" in summary


def test_scattered_order_ties_counts_neighbours_in_reading_order():
    import runpy

    import torch

    ties = runpy.run_path(str(REPO / "scripts" / "scattered_order_ties.py"))
    left = torch.tensor([[0, 1, 40], [3, 30, -1], [7, -1, -1]])  # reading order; -1 past the count
    gaps = ties["nearest_neighbour_gap"](left)
    assert gaps[:2].tolist() == [1, 27]
    assert gaps[2] > 1000, "one digit has no neighbour"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "scattered_order_ties.py"), "--images", "500",
                             "--ranges", "2-2,1-1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2-2 digits (500 images of 2 or more): within 0 px" in result.stdout
    assert "1-1 digits: no image holds 2 or more" in result.stdout
