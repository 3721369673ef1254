"""How close two floating-point results of two different code paths must be: a tolerance scaled to what is compared.

Float addition is not associative, so the same sum taken in another order (another chunking of the frames, a
recomputed activation, another thread count, another CPU's vector width, another batch around a row) differs by a few
units in the last place of the *largest* values that meet in it, whatever the size of one element of the result. A
fixed absolute tolerance is therefore wrong both ways: 1e-6 on gradients of size 18 asks for better than float32 can
promise (one element of 8,192 differed by 1.9e-6 on another CPU), and 1e-5 on values of size 1e-3 lets a real bug
through. The rule here: every element may differ by

    atol = k * eps(dtype) * max|expected| * sqrt(terms)

where terms is the length of the longest reduction feeding the values (rounding errors of n terms in no particular
order grow like sqrt(n)) and k is a small safety factor. A wrong result (a chunk boundary dropped, a mask ignored, a
frame mixed into another) moves values by a fraction of their size, thousands of times this tolerance.

Set TOLERANCE_REPORT=path to append every comparison's measured worst difference, in units of eps * max|expected|,
to that file (tab-separated: test, label, max|diff|, max|expected|, measured units, allowed units).
"""
from __future__ import annotations

import math
import os

import torch


def scaled_atol(expected: torch.Tensor, terms: int, k: float = 8.0) -> float:
    """k * eps * max|expected| * sqrt(terms): the absolute tolerance for a result of this size and reduction length."""
    eps = torch.finfo(expected.dtype).eps
    return k * eps * expected.detach().abs().max().item() * math.sqrt(terms)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, *, terms: int, k: float = 8.0,
                        label: str = "") -> None:
    """Every element of actual within scaled_atol(expected, terms, k) of expected (same shape and dtype)."""
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (label, actual.shape, expected.shape)
    assert expected.is_floating_point(), label
    scale = torch.finfo(expected.dtype).eps * expected.abs().max().item()
    assert scale > 0, f"{label}: expected is all zeros, so a scaled tolerance means nothing here"
    atol = scaled_atol(expected, terms, k)
    worst = (actual - expected).abs().max().item()
    report = os.environ.get("TOLERANCE_REPORT")
    if report:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(report, "a") as f:
            f.write(f"{test}\t{label}\t{worst:.3g}\t{expected.abs().max().item():.3g}\t{worst / scale:.2f}\t"
                    f"{atol / scale:.1f}\n")
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: (
        f"{label}: max|diff| {worst:.3g} = {worst / scale:.1f} x eps*max|expected| "
        f"(allowed {atol / scale:.1f} = {k} x sqrt({terms}))\n{m}"))
