"""Noise schedules: 1000-step definitions against independent NumPy/closed-form references, and the T-step subsample."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from schedulers import BASE_TIMESTEPS, SCHEDULES, make_schedule

NAMES = ["linear", "cosine", "quadratic", "sigmoid"]

# ᾱ_0 and ᾱ_{T-1} at T = 50 (grid indices 19 and 999), pinned so a constant change cannot slip through.
ALPHA_BAR_T50 = {
    "linear": (0.9942309516861578, 4.035829765375676e-05),
    "cosine": (0.9982524864661346, 2.4287669070348567e-09),
    "quadratic": (0.9974604183616032, 7.334124595808159e-04),
    "sigmoid": (0.9968992180914303, 3.968181990533219e-05),
}


def numpy_betas(name):
    """The four 1000-step schedules written out again in NumPy, independent of schedulers/."""
    n = 1000
    if name == "linear":
        return np.linspace(1e-4, 0.02, n)
    if name == "quadratic":
        return np.linspace(1e-4 ** 0.5, 0.02 ** 0.5, n) ** 2
    if name == "sigmoid":
        return 1 / (1 + np.exp(-np.linspace(-6, 6, n))) * (0.02 - 1e-4) + 1e-4
    f = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
    return np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)])


def test_schedules_registry():
    assert sorted(SCHEDULES) == sorted(NAMES)
    for name in NAMES:
        betas = SCHEDULES[name]()
        assert betas.dtype == torch.float64 and betas.shape == (BASE_TIMESTEPS,)


@pytest.mark.parametrize("name", NAMES)
def test_base_betas_match_numpy(name):
    np.testing.assert_allclose(SCHEDULES[name]().numpy(), numpy_betas(name), rtol=1e-12, atol=1e-15)


def test_linear_alpha_bar_by_hand():
    ab = make_schedule("linear", 1000).alphas_cumprod
    assert ab[0].item() == pytest.approx(1 - 1e-4, rel=1e-15)
    # β_1 = 1e-4 + (0.02 - 1e-4) / 999
    assert ab[1].item() == pytest.approx(0.9999 * (1 - (1e-4 + 0.0199 / 999)), rel=1e-14)
    for i in (0, 1, 499, 999):
        expected = np.prod([1 - (1e-4 + k * 0.0199 / 999) for k in range(i + 1)])
        assert ab[i].item() == pytest.approx(expected, rel=1e-12)


def test_cosine_alpha_bar_closed_form():
    ab = make_schedule("cosine", 1000).alphas_cumprod
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # Grid index i ends at continuous time i + 1: ᾱ[i] = f(i + 1) / f(0) wherever no beta was clipped.
    for i in (0, 19, 500, 998):
        assert ab[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-10)
    # Only the very last beta hits the 0.999 clip.
    assert ab[999].item() == pytest.approx(ab[998].item() * (1 - 0.999), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_t50_schedule_properties(name):
    s = make_schedule(name, 50)
    assert s.betas.shape == s.alphas_cumprod.shape == s.model_timesteps.shape == (50,)
    assert all(t.dtype == torch.float64 for t in (s.betas, s.alphas_cumprod, s.model_timesteps))
    assert ((s.betas > 0) & (s.betas < 1)).all()
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    first, last = ALPHA_BAR_T50[name]
    assert s.alphas_cumprod[0].item() == pytest.approx(first, rel=1e-10)
    assert s.alphas_cumprod[-1].item() == pytest.approx(last, rel=1e-10)
    assert s.alphas_cumprod[0] > 0.9
    assert s.alphas_cumprod[-1] < 1e-3
    torch.testing.assert_close(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod))


@pytest.mark.parametrize("name", NAMES)
def test_t1000_reproduces_base_schedule_exactly(name):
    base = SCHEDULES[name]()
    s = make_schedule(name, 1000)
    assert torch.equal(s.betas, base)
    assert torch.equal(s.alphas_cumprod, torch.cumprod(1 - base, dim=0))
    assert torch.equal(s.model_timesteps, torch.arange(1000, dtype=torch.float64))


def test_t50_model_timesteps():
    s = make_schedule("cosine", 50)
    assert s.model_timesteps.tolist() == [float(19 + 20 * k) for k in range(50)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("timesteps", [1, 7, 16, 50, 333])
def test_subsample_rule(name, timesteps):
    s = make_schedule(name, timesteps)
    # s_k = round((k + 1) * 1000 / T) - 1 with exact halves rounded up (T = 16 has some: 62.5, 187.5, ...).
    grid = [math.floor(Fraction((k + 1) * 1000, timesteps) + Fraction(1, 2)) - 1 for k in range(timesteps)]
    assert s.model_timesteps.tolist() == grid
    assert grid[-1] == 999
    base_ab = torch.cumprod(1 - SCHEDULES[name](), dim=0)
    torch.testing.assert_close(s.alphas_cumprod, base_ab[s.model_timesteps.long()], rtol=0, atol=0)
    torch.testing.assert_close(torch.cumprod(1 - s.betas, dim=0), s.alphas_cumprod, rtol=0, atol=1e-12)


def test_unknown_schedule_names_choices():
    with pytest.raises(ValueError) as err:
        make_schedule("exponential", 50)
    for name in NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("timesteps", [0, -3, 1001, 2.5, True])
def test_bad_timesteps(timesteps):
    with pytest.raises(ValueError, match="timesteps"):
        make_schedule("linear", timesteps)
