"""Fixtures for the deploy checks: every overlay rendered once per session."""

from __future__ import annotations

import pytest

from tests.deploy.deploylib import DEPLOY, OVERLAYS, Rendered, render


@pytest.fixture(scope="session")
def rendered_overlays() -> dict[str, Rendered]:
    """``kubectl kustomize`` output of every overlay, parsed, keyed by overlay name."""
    return {name: render(DEPLOY / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered_overlays: dict[str, Rendered]) -> Rendered:
    """Each rendered overlay in turn."""
    return rendered_overlays[request.param]
