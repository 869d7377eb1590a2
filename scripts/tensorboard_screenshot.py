"""Look at a sweep in TensorBoard the way a person would: start TensorBoard on 127.0.0.1, print its run list,
and save headless-Chromium screenshots of its Time Series, Custom Scalars, HParams and Images pages.

    python scripts/tensorboard_screenshot.py outputs/multirun/<sweep> --out docs/sweeps/

A sweep made by an older stnbench first gets its Custom Scalars layout moved into its runs
(stnbench.tensorboard.write_sweep_layout). Needs Chromium (Debian: apt-get install chromium). Writes
tensorboard_timeseries.png (with the run list), tensorboard_custom_scalars.png, tensorboard_hparams.png and
tensorboard_images.png (the labelled val/transformer grid) into --out (default: the sweep folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from stnbench.tensorboard import write_sweep_layout

PAGES = {"timeseries": "#timeseries", "custom_scalars": "#custom_scalars", "hparams": "#hparams",
         "images": "#images"}
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"tensorboard_screenshot: error: TensorBoard did not answer at {url} within {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: the sweep folder)")
    parser.add_argument("--size", default="1600,1000", help="window size WIDTH,HEIGHT")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("tensorboard_screenshot: error: no Chromium found; install it (apt-get install chromium)")
    for folder in write_sweep_layout(args.sweep_dir):  # only for sweeps made by an older stnbench
        print(f"added the Custom Scalars layout to {folder}")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(args.sweep_dir),
                               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/data/runs")
        time.sleep(3)  # first load of the event files
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=10) as response:
            print("TensorBoard's runs: " + ", ".join(json.loads(response.read())))
        for name, fragment in PAGES.items():
            target = out / f"tensorboard_{name}.png"
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([browser, *CHROMIUM, f"--user-data-dir={profile}", f"--window-size={args.size}",
                                "--virtual-time-budget=20000", f"--screenshot={target}",
                                f"http://127.0.0.1:{port}/{fragment}"],
                               check=True, capture_output=True, timeout=120)
            print(f"wrote {target}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
