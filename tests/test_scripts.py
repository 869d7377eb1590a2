"""The benchmark and GPU-check scripts run to completion (they are not timed here: they print ratios)."""

from __future__ import annotations

import json
import os
import subprocess
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
