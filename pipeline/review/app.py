"""The review web app: the page, its tiles and the review API over one group's store (FastAPI).

Reads (the page, tiles, features, the queue, click-to-grow) need nothing; every state-changing request
needs the per-launch token in the ``X-Review-Token`` header (403 without it), so another page open in
the browser cannot write (it cannot read the token: no CORS). Only the Host names the server was
started for are answered (a DNS-rebinding page gets 400). Posted geometries are checked
(:mod:`pipeline.review.geometry`) and a bad one is answered 422 before the store is touched; a stale
edit is answered 409 with the feature as it is now. Paths all come from the command line.
"""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Any, Literal

import shapely
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from shapely.geometry import mapping
from starlette.middleware.trustedhost import TrustedHostMiddleware

from pipeline.review.geometry import GeometryProblem, checked_geometry
from pipeline.review.group import CELL_PX, ReviewGroup
from pipeline.review.grow import NothingToGrow, grow_region
from pipeline.review.store import Conflict, ReviewError, ReviewStore, UnknownFeature
from pipeline.review.tiles import PROBABILITY_LAYER, NoTile, TileSource

TOKEN_HEADER = "X-Review-Token"
Status = Literal["pending", "accepted", "rejected", "edited", "added", "deleted"]
KEYS = {  # shown on the page; the page's script binds the same keys
    "a": "accept the current candidate", "r": "reject the current candidate", "n": "next pending candidate",
    "p": "previous candidate", "d": "draw a new polygon", "e": "edit vertices of the selected feature",
    "g": "click-to-grow from the probability", "Delete": "delete the selected drawn feature / reject a candidate",
    "z (Ctrl+Z)": "undo", "Escape": "stop drawing / editing", "f (hold)": "flicker: show t2 in the t1 pane",
    "s": "swipe on / off", "o": "probability overlay on / off",
    "c": "mark the review cell under the cursor reviewed / not reviewed",
}


class NewFeature(BaseModel):
    """A polygon drawn or grown by the reviewer."""

    model_config = ConfigDict(extra="forbid")
    geometry: dict[str, Any]
    feature_class: int = Field(default=1, alias="class", ge=0, le=254)
    comment: str = Field(default="", max_length=2000)
    uuid: str | None = Field(default=None, pattern=r"^[0-9a-fA-F-]{8,64}$")
    op_id: str | None = Field(default=None, max_length=64)
    reviewer: str | None = Field(default=None, max_length=100)


class CellMark(BaseModel):
    """A review cell marked reviewed or not."""

    model_config = ConfigDict(extra="forbid")
    reviewed: bool
    op_id: str | None = Field(default=None, max_length=64)
    reviewer: str | None = Field(default=None, max_length=100)


class FeatureChange(BaseModel):
    """A change of one feature, made on ``version``."""

    model_config = ConfigDict(extra="forbid")
    version: int
    status: Status | None = None
    geometry: dict[str, Any] | None = None
    feature_class: int | None = Field(default=None, alias="class", ge=0, le=254)
    comment: str | None = Field(default=None, max_length=2000)
    op_id: str | None = Field(default=None, max_length=64)
    reviewer: str | None = Field(default=None, max_length=100)


def as_geojson(feature: dict[str, Any]) -> dict[str, Any]:
    """A store feature as a GeoJSON Feature (id = uuid; the store's columns as properties, WKB left out).

    Args:
        feature: a row of :class:`~pipeline.review.store.ReviewStore`.

    Returns:
        The GeoJSON dict.
    """
    properties = {k: v for k, v in feature.items() if k not in ("geometry", "detection_geometry")}
    return {"type": "Feature", "id": feature["uuid"], "geometry": mapping(shapely.from_wkb(feature["geometry"])),
            "properties": properties}


def page_config(group: ReviewGroup, tiles: TileSource, token: str, reviewer: str) -> dict[str, Any]:
    """What the page needs: the grid as an OpenLayers tile grid, the layers, the token, the keys.

    Args:
        group: the checked group.
        tiles: its tile source (tile matrix set, stretches).
        token: the per-launch write token.
        reviewer: the default reviewer name.

    Returns:
        A JSON-ready dict.
    """
    tms = tiles.tms
    resolutions = [tms.matrix(z).cellSize for z in range(tms.minzoom, tms.maxzoom + 1)]
    left, top = tms.matrix(tms.minzoom).pointOfOrigin
    return {
        "group": group.name, "token": token, "reviewer": reviewer, "extent": list(group.grid.bounds),
        "origin": [left, top], "resolutions": resolutions, "tile_size": tms.matrix(tms.maxzoom).tileWidth,
        "crs": group.grid.crs.to_string(), "units": "m" if group.grid.crs.linear_units in ("metre", "meter") else "",
        "t1": group.t1, "t2": group.t2, "images": sorted(group.images), "threshold": group.threshold,
        "sensors": group.sensors, "keys": KEYS, "provenance": group.provenance,
    }


def _static_dir() -> str:
    return str(resources.files("pipeline.review") / "static")


def create_app(group: ReviewGroup, store: ReviewStore, tiles: TileSource, *, token: str | None = None,
               reviewer: str = "reviewer", hosts: list[str] | None = None) -> FastAPI:
    """The review app of one group.

    Args:
        group: the checked group.
        store: its review store (candidates imported).
        tiles: its tile source.
        token: the write token (a new random one when None; ``app.state.token`` holds it).
        reviewer: the reviewer name of changes that name none.
        hosts: Host header values answered (default: 127.0.0.1, localhost and the test client's).

    Returns:
        The FastAPI app.
    """
    token = token or secrets.token_urlsafe(24)
    app = FastAPI(title=f"changeflow review: {group.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token = token
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts or ["127.0.0.1", "localhost", "testserver"])
    app.include_router(_read_routes(group, store, tiles, page_config(group, tiles, token, reviewer)))
    app.include_router(_write_routes(group, store, token, reviewer))
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")
    return app


def _read_routes(group: ReviewGroup, store: ReviewStore, tiles: TileSource, config: dict[str, Any]) -> APIRouter:
    """The page, its config, tiles, features, the queue, click-to-grow, cells and the log: no token needed."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(f"{_static_dir()}/index.html", headers={"Cache-Control": "no-store"})

    @router.get("/api/config")
    def get_config() -> dict[str, Any]:
        return config

    @router.get("/tiles/{layer}/{z}/{x}/{y}.png")
    def tile(layer: str, z: int, x: int, y: int, threshold: float = Query(default=group.threshold, ge=0, le=1)) -> Response:
        try:
            png = tiles.probability_png(z, x, y, threshold) if layer == PROBABILITY_LAYER else tiles.image_png(layer, z, x, y)
        except NoTile as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=600"})

    @router.get("/api/features")
    def features() -> dict[str, Any]:
        return {"type": "FeatureCollection", "features": [as_geojson(f) for f in store.features()]}

    @router.get("/api/queue")
    def queue() -> list[str]:
        return store.queue(group.threshold)

    @router.get("/api/features/{uuid}")
    def feature(uuid: str) -> dict[str, Any]:
        try:
            return as_geojson(store.feature(uuid))
        except UnknownFeature as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/api/grow")
    def grow(x: float, y: float, threshold: float = Query(default=group.threshold, ge=0, le=1)) -> dict[str, Any]:
        try:
            grown = grow_region(group, x, y, threshold)
        except NothingToGrow as exc:
            raise HTTPException(422, str(exc)) from None
        return {"geometry": mapping(grown.geometry), "n_pixels": grown.n_pixels, "mean_prob": grown.mean_prob,
                "clipped": grown.clipped}

    @router.get("/api/cells")
    def cells() -> dict[str, Any]:
        rows, cols = group.grid.cells()
        return {"cell_px": CELL_PX, "rows": rows, "cols": cols, "reviewed": store.reviewed_cells()}

    @router.get("/api/log")
    def log() -> list[dict[str, Any]]:
        return store.log()

    return router


def _write_routes(group: ReviewGroup, store: ReviewStore, token: str, reviewer: str) -> APIRouter:
    """Adding and changing features, marking cells: each needs the token (403 without it)."""

    def write_access(x_review_token: str | None = Header(default=None)) -> None:
        if x_review_token is None or not secrets.compare_digest(x_review_token, token):
            raise HTTPException(403, f"a write needs this launch's token in the {TOKEN_HEADER} header")

    router = APIRouter(dependencies=[Depends(write_access)])

    @router.post("/api/features", status_code=201)
    def add(body: NewFeature) -> dict[str, Any]:
        geometry = _checked(body.geometry, group)
        return as_geojson(store.add(geometry, body.reviewer or reviewer, feature_class=body.feature_class,
                                    comment=body.comment, uuid=body.uuid, op_id=body.op_id))

    @router.patch("/api/features/{uuid}")
    def change(uuid: str, body: FeatureChange) -> Any:
        changes: dict[str, Any] = {"status": body.status, "class": body.feature_class, "comment": body.comment}
        changes = {key: value for key, value in changes.items() if value is not None}
        if body.geometry is not None:
            changes["geometry"] = _checked(body.geometry, group)
        try:
            return as_geojson(store.update(uuid, body.version, changes, body.reviewer or reviewer, op_id=body.op_id))
        except UnknownFeature as exc:
            raise HTTPException(404, str(exc)) from None
        except ReviewError as exc:
            raise HTTPException(422, str(exc)) from None
        except Conflict as exc:
            return JSONResponse({"detail": str(exc), "current": as_geojson(exc.current)}, status_code=409)

    @router.put("/api/cells/{row}/{col}")
    def mark_cell(row: int, col: int, body: CellMark) -> dict[str, Any]:
        rows, cols = group.grid.cells()
        if not (0 <= row < rows and 0 <= col < cols):
            raise HTTPException(422, f"no review cell ({row}, {col}): the grid has {rows} x {cols}")
        store.mark_cell(row, col, body.reviewed, body.reviewer or reviewer, op_id=body.op_id)
        return {"row": row, "col": col, "reviewed": body.reviewed}

    return router


def _checked(geojson: dict[str, Any], group: ReviewGroup) -> shapely.Geometry:
    """The posted geometry once checked; a 422 with the reason otherwise."""
    try:
        return checked_geometry(geojson, group.grid.bounds)
    except GeometryProblem as exc:
        raise HTTPException(422, f"geometry refused: {exc}") from None
