"""Strict JAX for every test: rank promotion raises, float64 is available per test."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run a test with 64-bit floats enabled (exact parity checks)."""
    with jax.enable_x64(True):
        yield
