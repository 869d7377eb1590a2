"""What a new user sees of a command: one console line per log record, no advertisements, epochs counted
alike everywhere, the run folder on the last line; and the gallery kept apart from training runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import data_root

TINY = ["data=rotated", "model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.num_val=500"]
PREFIX = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - |^(DEBUG|INFO|WARNING|ERROR): ")


def command(module: str, args: list[str], out: Path, cache: Path) -> subprocess.CompletedProcess:
    """A stnbench command as a terminal shows it: stdout and stderr in one stream, in the order written."""
    env = {**os.environ, "STNBENCH_DATA_DIR": str(data_root()), "STNBENCH_OUTPUT_DIR": str(out),
           "STNBENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-c", f"from stnbench.{module} import main; main()", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def console_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_a_tiny_runs_console_says_everything_once_and_ends_with_its_run_folder(tmp_path, cache_dir):
    result = command("train", TINY, tmp_path, cache_dir)
    assert result.returncode == 0, result.stdout[-3000:]
    lines = console_lines(result)
    messages = Counter(PREFIX.sub("", line) for line in lines)
    assert [m for m, n in messages.items() if n > 1] == [], "\n".join(lines)  # e.g. "INFO: Seed set to 1" twice
    text = "\n".join(lines)
    for noise in ("Tip:", "litlogger", "litmodels", "LeafSpec", "FLOPs", "Epoch 0/0",
                  "smaller than the logging interval"):
        assert noise not in text, f"{noise!r} in the console:\n{text}"
    assert "epoch 1/1 step 3" in text and "model Baseline: 131,354 parameters" in text
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert lines[-1].endswith(str(run_dir)) and "results.json" in lines[-1], lines[-1]
    saved = json.loads((run_dir / "results.json").read_text())
    assert f"test/err {saved['test/err']:.2f}" in lines[-1]  # rounded, not 86.4000015258789
    assert len(lines) <= 16, text  # was 56 lines before issue 24


def test_the_progress_bar_counts_epochs_as_the_log_does(tmp_path, cache_dir):
    result = command("train", [*TINY, "trainer.max_epochs=2", "+trainer.enable_progress_bar=true"], tmp_path,
                     cache_dir)
    assert result.returncode == 0, result.stdout[-3000:]
    text = result.stdout
    assert "epoch 1/2 step 3" in text and "epoch 2/2 step 6" in text
    assert "Epoch 2/2" in text and "Epoch 1/1" not in text and "Epoch 0/" not in text


def test_the_gallery_has_a_folder_of_its_own_that_reports_never_count(tmp_path, cache_dir):
    from stnbench.report import collect

    result = command("gallery", ["data=rotated", "count=4", "data.num_val=500"], tmp_path, cache_dir)
    assert result.returncode == 0, result.stdout[-3000:]
    (picture,) = (tmp_path / "gallery").glob("*/rotated.png")
    assert str(picture) in console_lines(result)[-1]
    assert not (tmp_path / "runs").exists()
    assert collect(tmp_path).empty
