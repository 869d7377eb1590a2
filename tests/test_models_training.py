"""Real training on a small real multi-digit set: two MNIST digits side by side (28x56), target [B, 2].

Built here from real digits with ``torch.cat`` so the test does not depend on the multi_digit data module.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stnbench.data.mnist import load_mnist
from test_models import build_model

STEPS, BATCH = 200, 32
# Small nets (the architecture is the config's; only widths shrink) and 28x28 glimpses: one digit each.
SMALL = {
    "cnn": ("model.classifier.channels=[8,16]",),
    "st_cnn": ("model.classifier.channels=[8,16]", "model.localisation.channels=[8,8]",
               "model.localisation.hidden=32", "model.output_size=28"),
}
SMALL["rnn_stn"] = SMALL["st_cnn"]
SMALL["recurrent_stn"] = SMALL["st_cnn"] + ("model.encoder.channels=[8,8]", "model.encoder.hidden=32")


@pytest.fixture(scope="module")
def pairs(mnist_root) -> tuple[torch.Tensor, torch.Tensor]:
    """1024 training pairs and 256 held-out pairs of real test-set digits, images in [0, 1]."""
    digits = load_mnist(mnist_root, train=False)
    images = digits.images[:2560].float().div(255.0).view(-1, 2, 1, 28, 28)
    labels = digits.labels[:2560].view(-1, 2)
    canvas = torch.cat([images[:, 0], images[:, 1]], dim=-1)  # [N, 1, 28, 56]: left digit, right digit
    return canvas, labels


def sequence_loss(model, images, targets) -> torch.Tensor:
    logits = model(images).logits[:, -targets.shape[1]:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@pytest.mark.parametrize("model_name", [
    "recurrent_stn",
    "rnn_stn",
    pytest.param("st_cnn", marks=pytest.mark.slow),
    pytest.param("cnn", marks=pytest.mark.slow),
])
def test_a_few_hundred_steps_lower_the_loss(pairs, model_name):
    torch.set_num_threads(1)  # one thread is far faster than two on a shared 2-core machine
    torch.manual_seed(0)
    images, labels = pairs
    train_x, train_y, held_x, held_y = images[:1024], labels[:1024], images[1024:], labels[1024:]
    model = build_model(model_name, (1, 28, 56), num_steps=2, overrides=SMALL[model_name])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        held_before = float(sequence_loss(model, held_x, held_y))
    order = torch.randint(0, len(train_x), (STEPS, BATCH), generator=torch.Generator().manual_seed(0))
    losses = []
    for index in order:
        loss = sequence_loss(model, train_x[index], train_y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        held_after = float(sequence_loss(model, held_x, held_y))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first - 0.5, (first, last)
    assert held_after < held_before - 0.3, (held_before, held_after)
