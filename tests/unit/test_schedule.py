"""warmup_cosine: the LR factor LambdaLR applies at each optimizer step."""

import math

import pytest

from pipeline.models.classifier import warmup_cosine


def test_linear_warmup_reaches_full_rate_on_its_last_step():
    assert [warmup_cosine(s, warmup=4, total=20) for s in range(4)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0])


def test_cosine_starts_at_one_halves_at_the_midpoint_and_ends_at_zero():
    f = [warmup_cosine(s, warmup=4, total=20) for s in range(25)]
    assert f[4] == pytest.approx(1.0)  # first step after the warm-up
    assert f[12] == pytest.approx(0.5)  # half of the 16 decay steps
    assert f[8] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f[20] == pytest.approx(0.0, abs=1e-12)
    assert f[21:] == [f[20]] * 4  # past the end it stays at zero
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))


def test_no_warmup_starts_at_full_rate():
    assert warmup_cosine(0, warmup=0, total=10) == pytest.approx(1.0)
    assert warmup_cosine(5, warmup=0, total=10) == pytest.approx(0.5)


@pytest.mark.parametrize(("warmup", "total"), [(4, 4), (4, 2), (0, 0)])
def test_total_not_above_warmup_ramps_then_drops_without_dividing_by_zero(warmup, total):
    """Training stops within (or right at the end of) the warm-up: the steps it runs follow
    the ramp, the factor never exceeds 1, and one step past the warm-up it is 0."""
    ramp = [warmup_cosine(s, warmup=warmup, total=total) for s in range(warmup)]
    assert ramp == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert warmup_cosine(warmup, warmup=warmup, total=total) == pytest.approx(1.0)
    assert warmup_cosine(warmup + 1, warmup=warmup, total=total) == pytest.approx(0.0, abs=1e-12)
