"""Learning-rate schedules: warm-up, cosine decay and the papers' step decay, as the optimiser sees them."""

import pytest
import torch

from conftest import compose_config
from stnbench.optim import cosine_schedule, step_schedule


def rates(make_schedule, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = make_schedule(optimizer)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_cosine_warms_up_linearly_then_decays_to_the_final_fraction():
    lr = rates(lambda opt: cosine_schedule(opt, total_steps=110, warmup_steps=10, final_fraction=0.1), 111)
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lr[:9], lr[1:10], strict=True))
    assert all(a >= b for a, b in zip(lr[10:-1], lr[11:], strict=True))
    assert lr[60] == pytest.approx(0.55) and lr[110] == pytest.approx(0.1)


def test_step_schedule_divides_by_ten_every_step_size():
    lr = rates(lambda opt: step_schedule(opt, total_steps=0, step_size=5, gamma=0.1), 12)
    assert lr[4] == 1.0 and lr[5] == pytest.approx(0.1) and lr[10] == pytest.approx(0.01)


def test_the_default_schedule_warms_up():
    """Without warm-up, Adam's first full-size steps stalled CNN classifiers on multi_digit at chance."""
    assert compose_config([]).scheduler.warmup_steps > 0
