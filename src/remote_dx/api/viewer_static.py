"""The browser viewer (``viewer/dist``, built by ``make viewer/dist``) served at ``/``.

Where the build is: ``RDX_VIEWER_DIST`` when set (the Docker image sets ``/app/viewer/dist``,
copied from its node build stage); else the source tree's ``viewer/dist`` (an editable install, as
in development and CI); else ``viewer/dist`` under the working directory (an installed package,
whose own path says nothing about where the viewer was built).

The API stays where it is: the viewer's mount steps aside for every path another route of the
app answers (``/api/…``, ``/dicom-web/…``, ``/docs``, ``/healthz`` …), whatever order the routes
were added in, so a router included after the mount is not shadowed by it. Paths the build does
not hold and that look like pages (no file suffix) answer ``index.html``, the single-page app's
entry, so a reload or a bookmarked address opens the viewer rather than a 404.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

log = logging.getLogger(__name__)

# src/remote_dx/api/viewer_static.py → the source tree's viewer/dist
SOURCE_DIST = Path(__file__).resolve().parents[3] / "viewer" / "dist"


def find_dist() -> Path:
    """The viewer build to serve: ``RDX_VIEWER_DIST``, the source tree's, or the working
    directory's (the first of the last two that holds an ``index.html``)."""
    named = os.environ.get("RDX_VIEWER_DIST")
    if named:
        return Path(named)
    for candidate in (SOURCE_DIST, Path.cwd() / "viewer" / "dist"):
        if (candidate / "index.html").is_file():
            return candidate
    return SOURCE_DIST


API_PREFIXES = ("api/", "dicom-web/", "wado")


class ViewerFiles(StaticFiles):
    """Static files with the single-page fallback and cache headers fit for hashed assets."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            # An API address no route answers stays a 404, never the viewer's page.
            if exc.status_code != 404 or Path(path).suffix or path.startswith(API_PREFIXES):
                raise
            response = await super().get_response("index.html", scope)
        if path.startswith("assets/") and response.status_code == 200:
            # Vite names built assets by their content hash: a new build is a new name.
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            response.headers.setdefault("Cache-Control", "no-cache")
        return response


class ViewerMount(Mount):
    """A mount at ``/`` that matches only what no other route of the app matches."""

    def __init__(self, app: FastAPI, dist: Path) -> None:
        super().__init__("/", app=ViewerFiles(directory=dist, html=True), name="viewer")
        self._routes: list[BaseRoute] = app.router.routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        for route in self._routes:
            if route is self:
                continue
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return Match.NONE, {}
        return super().matches(scope)


def mount_viewer(app: FastAPI, dist: Path | None = None) -> bool:
    """Serve the built viewer at ``/`` when it exists; answer whether it was mounted."""
    dist = find_dist() if dist is None else dist
    if not (dist / "index.html").is_file():
        log.info("viewer not built (%s missing); run `make viewer/dist` to serve it at /", dist)
        return False
    app.router.routes.append(ViewerMount(app, dist))
    return True
