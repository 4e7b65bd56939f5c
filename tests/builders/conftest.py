"""Fixtures of the builder tests."""

from tests.mllp_listener import listener  # noqa: F401
