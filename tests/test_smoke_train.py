from stnbench.train import train

from conftest import compose_config


def test_fast_dev_run_trains_and_writes_nothing_broken(tmp_path, cache_dir):
    cfg = compose_config(["debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                          "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.num_val=500"],
                         run_dir=tmp_path, cache=cache_dir)
    results = train(cfg)
    assert (tmp_path / "results.json").exists()
    assert results["choice/model"] == "st_cnn"
    assert 0 <= results["test/err"] <= 100
