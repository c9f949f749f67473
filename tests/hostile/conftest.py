"""Fixtures the hostile suite shares (its helpers are in hostile_helpers.py; tests/conftest.py's fixtures
apply here too)."""

from __future__ import annotations

import pytest


@pytest.fixture
def model(tiny_exported):
    """The tiny exported model (tests/conftest.py): a real one, fast enough for every case."""
    return tiny_exported
