"""The web/API (FastAPI). Routers are thin; the logic they call lives in the domain packages."""

from remote_dx.api.app import create_app

__all__ = ["create_app"]
