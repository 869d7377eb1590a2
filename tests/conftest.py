"""Shared fixtures: the real MNIST files, a throw-away cache, and Hydra configs shrunk for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from stnbench.data.mnist import MNISTNotFoundError, load_mnist, raw_files_problem

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one; scripts/gpu_check.sh runs them)")


def data_root() -> Path:
    """STNBENCH_DATA_DIR, else the shared copy beside the checkout, else ./data (downloaded if need be).

    The tests run on real MNIST only; without it they fail with the loader's message on where to put it.
    """
    for candidate in (os.environ.get("STNBENCH_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and raw_files_problem(Path(candidate)) is None:
            return Path(candidate)
    try:
        load_mnist(REPO / "data", train=False, download=True)
    except MNISTNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
    return REPO / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return data_root()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


def compose_config(overrides: list[str], config_name: str = "train", run_dir: Path | None = None,
                   cache: Path | None = None) -> DictConfig:
    """Compose a real config the way the command line would, with paths pointed at test folders."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.paths.data_dir = str(data_root())
            if cache is not None:
                cfg.paths.cache_dir = str(cache)
        HydraConfig.instance().set_config(cfg)  # what @hydra.main does: ${hydra:...} resolves
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def add_callbacks(monkeypatch, *callbacks) -> None:
    """Give the next train() these Lightning callbacks without putting them in its config: a test's hooks
    (a signal at step 4, a stop after an epoch) must not become part of what the run computes, or the run
    could not be resumed without them (stnbench.identity)."""
    from stnbench import build

    instantiate = build.instantiate_group

    def with_hooks(group_cfg, what):
        made = instantiate(group_cfg, what)
        return made + list(callbacks) if what == "callbacks" else made

    monkeypatch.setattr(build, "instantiate_group", with_hooks)
