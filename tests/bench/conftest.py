"""The latency model the bench tests plan and simulate with (the committed profiles)."""

import pytest

from fineserve.profiles.composite import default_latency_model


@pytest.fixture(scope="module")
def latency():
    return default_latency_model()
