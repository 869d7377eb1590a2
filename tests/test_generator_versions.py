"""A generator's cached eval sets are keyed by its ``version``: when the images it renders for the same
parameters and seed change, the version must change too, or runs would silently reuse stale val/test sets.

This test pins a fingerprint of every data option's output. If it fails:
* "changed without a version bump": bump ``version`` of the named generator class (data/*.py), then
* "update the pinned fingerprint": print the new table with ``python tests/test_generator_versions.py``
  and paste it over FINGERPRINTS below.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, data_root
from stnbench.data.datamodule import quantize
from stnbench.data.mnist import load_mnist

# Smaller banks keep the test fast; the fingerprint is of exactly this configuration.
OVERRIDES = {"multi_digit": {"bank_size": 500}, "multi_digit_scattered": {"bank_size": 500}}
# data option -> (generator version, fingerprint of 16 rendered images and their targets)
FINGERPRINTS = {
    'addition': (1, '9c17b39ba985ac13'),
    'cluttered': (2, '3486c9e8f13798aa'),
    'cluttered_ram': (2, 'b4c310a0fbf34155'),
    'elastic': (1, '2530c41502b0d04a'),
    'mnist': (1, 'a436c7e1c6106381'),
    'multi_digit': (1, 'b21523b527464ae1'),
    'multi_digit_jittered': (1, '492ff9db765c4f65'),
    'multi_digit_scattered': (1, '2d5c5ff17e1a9424'),
    'perturbed': (2, '25a092b665bec339'),
    'projective': (1, '89232f63369b8bf4'),
    'rotated': (1, 'f9571aa484107d1a'),
    'rts': (1, '1051e8233d8346bb'),
    'translated': (1, '93be8e756fa9057a'),
}


def options() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml") if not p.stem.startswith("_"))


def fingerprint(option: str) -> tuple[int, str]:
    node = OmegaConf.load(CONFIG_DIR / "data" / f"{option}.yaml").distortion
    node = OmegaConf.merge(node, OVERRIDES.get(option, {}))
    if "root" in node:
        node.root = str(data_root())
    distortion = instantiate(node)
    pool = load_mnist(data_root(), train=False)
    rendered = distortion.render(pool, torch.arange(16), torch.Generator().manual_seed(0))
    digest = hashlib.sha256(quantize(rendered.images).numpy().tobytes())
    digest.update(rendered.targets.numpy().tobytes())
    return int(getattr(distortion, "version", 1)), digest.hexdigest()[:16]


@pytest.mark.parametrize("option", options())
def test_generator_output_is_pinned_to_its_version(option):
    version, found = fingerprint(option)
    pinned_version, pinned = FINGERPRINTS.get(option, (None, None))
    if pinned_version == version:
        assert found == pinned, (f"data={option}: the generator's output changed without a version bump; bump its "
                                 "class's `version` (cached val/test sets are keyed by it), then update the table")
    else:
        pytest.fail(f"data={option}: update the pinned fingerprint: FINGERPRINTS[{option!r}] = ({version}, "
                    f"{found!r})  (python tests/test_generator_versions.py prints the table)")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    for name in options():
        print(f"    {name!r}: {fingerprint(name)},")
