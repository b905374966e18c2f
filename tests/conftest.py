"""Test configuration: autohess is imported first, so JAX runs in float64 everywhere."""

import autohess  # noqa: F401  (turns on x64 before any array exists)
import jax
import numpy as np
import pytest


@pytest.fixture
def getkey():
    """A fresh JAX PRNG key per call, deterministic per test."""
    keys = iter(jax.random.split(jax.random.key(20261124), 1000))
    return lambda: next(keys)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
