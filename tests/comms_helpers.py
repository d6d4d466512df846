"""A fixture that runs a test twice: with paho as shipped and with comms.speedups enabled (as in the ingest)."""

from __future__ import annotations

import pytest

from comms import speedups


@pytest.fixture(params=[False, True], ids=["paho-as-shipped", "speedups"])
def speedups_mode(request):
    """Request it before any client fixture, so the clients stop before paho is given back."""
    speedups.disable()
    if request.param:
        assert speedups.enable(), "the speed-ups refused the installed paho"
    yield request.param
    speedups.disable()
