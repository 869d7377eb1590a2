"""GPU-only checks (marker ``gpu``; skipped without CUDA). scripts/gpu_check.sh runs them on a lent GPU."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from stnbench.build import build_datamodule, build_model
from stnbench.data.datamodule import derive_seed
from stnbench.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_a_tiny_run_learns_on_the_gpu(tmp_path, cache_dir):
    cfg = compose_config(["data=mnist", "model=st_cnn", "trainer=gpu", "logger=csv", "trainer.max_epochs=1",
                          "trainer.limit_train_batches=60", "data.batch_size=64", "data.num_val=1000",
                          "trainer.limit_val_batches=1", "trainer.limit_test_batches=2", "data.eval_batch_size=500"],
                         run_dir=tmp_path, cache=cache_dir)
    results = train(cfg)  # deterministic: warn, so grid_sample's backward does not crash on CUDA
    assert results["status"] == "finished" and results["test/err"] < 40.0


def test_batches_rendered_on_the_gpu_match_the_cpu(tmp_path, cache_dir):
    cfg = compose_config(["data=rts", "data.num_val=1000"], run_dir=tmp_path, cache=cache_dir)
    datamodule = build_datamodule(cfg.data)
    index = torch.arange(256)
    batch = {"split": "train", "seed": derive_seed("gpu", 1)}
    cpu_images, cpu_targets = datamodule.materialize({**batch, "index": index})
    gpu_images, gpu_targets = datamodule.materialize({**batch, "index": index.cuda()})
    assert torch.equal(cpu_targets, gpu_targets.cpu())
    # Different random streams per device are allowed; the distribution is what must match.
    assert abs(cpu_images.mean() - gpu_images.mean().cpu()) < 0.02


def test_bf16_autocast_keeps_the_sampler_in_fp32(tmp_path, cache_dir):
    cfg = compose_config(["data=rts", "model=st_cnn", "data.num_val=1000"], run_dir=tmp_path, cache=cache_dir)
    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg.model, datamodule).cuda()
    images = datamodule.preview("val", 8)[0].cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = model(images)
    assert output.glimpses is not None and output.glimpses.dtype == torch.float32
    assert torch.isfinite(output.logits.float()).all()
