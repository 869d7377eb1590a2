"""Every published number is reachable: its data, model and transform options exist, a run of that model
option is recorded under that name, and the papers' comparisons (experiments) carry their numbers."""

from __future__ import annotations

import pytest
import yaml

from conftest import CONFIG_DIR, compose_config
from stnbench.build import model_name
from stnbench.published import PUBLISHED, lookup


@pytest.mark.parametrize("data, model, transform", sorted(PUBLISHED, key=str))
def test_published_keys_name_real_options(data, model, transform):
    assert (CONFIG_DIR / "data" / f"{data}.yaml").is_file()
    assert (CONFIG_DIR / "model" / f"{model}.yaml").is_file()
    cfg = compose_config([f"data={data}", f"model={model}"])
    assert model_name(model, cfg.model._target_) == model, "a run of this option is recorded under its name"
    has_transform = "transform" in cfg.model
    assert has_transform == (transform is not None)
    if transform is not None:
        assert (CONFIG_DIR / "model" / "transform" / f"{transform}.yaml").is_file()


@pytest.mark.parametrize("experiment, expected", [
    ("cluttered", {"fcn": 13.2, "cnn": 3.5, "st_fcn": 2.0, "st_cnn": 1.7}),
    ("addition", {"fcn": 47.7, "cnn": 14.7, "st_fcn": 18.5, "st_fcn_2x": 5.8}),
    ("sonderby_multi_digit", {"sonderby_cnn": 2.9, "sonderby_cnn_spn": 2.0, "sonderby_rnn_spn": 1.5}),
])
def test_the_papers_comparisons_carry_their_published_numbers(experiment, expected):
    spec = yaml.safe_load((CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text())
    params = spec["hydra"]["sweeper"]["params"]
    models = params["model"].split(",")
    assert set(expected) <= set(models)
    for model, err in expected.items():
        transform = "affine" if "transform" in compose_config([f"model={model}"]).model else None
        published = lookup(params["data"], model, transform)
        assert published is not None and published.err == err, (experiment, model)
    if experiment == "sonderby_multi_digit":
        assert lookup("multi_digit", "sonderby_rnn_spn", "affine").metric == "test/digit_err"
