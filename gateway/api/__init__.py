"""The HTTP adapter (DESIGN §1.3): a thin FastAPI layer over :class:`gateway.Gateway`."""

from __future__ import annotations

from gateway.api.app import create_app
from gateway.api.context import Settings

__all__ = ["Settings", "create_app"]
