"""Rational polynomial coefficients: parsing, the forward model, and orthorectification.

GF-2 and GF-3 products ship their RPCs as a sidecar in the DigitalGlobe RPB key/value syntax
(``lineOffset = 812;``, ``lineNumCoef = ( ... );``), named ``.rpb`` (GF-2) or ``.rpc`` (GF-3).
:func:`read_rpc` parses it into a :class:`rasterio.rpc.RPC`; GDAL's RPC transformer then does the
orthorectification (``rasterio.warp.reproject(..., rpcs=...)`` with ``RPC_HEIGHT`` or ``RPC_DEM``).

The forward model (:func:`rpc_forward`: longitude, latitude, height → sample, line) is the RPC00B
polynomial ratio, written out here so that tests can check where GDAL put each pixel.
Image coordinates follow the RPC convention: integer (sample, line) are pixel *centres*, so
(0, 0) is the centre of the top-left pixel, and GDAL's corner-based pixel position is
(sample + 0.5, line + 0.5).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC
from rasterio.warp import reproject
from rasterio.warp import transform as transform_points

from pipeline.errors import InputError

# RPB key → RPC attribute
_SCALARS = {
    "errBias": "err_bias",
    "errRand": "err_rand",
    "lineOffset": "line_off",
    "sampOffset": "samp_off",
    "latOffset": "lat_off",
    "longOffset": "long_off",
    "heightOffset": "height_off",
    "lineScale": "line_scale",
    "sampScale": "samp_scale",
    "latScale": "lat_scale",
    "longScale": "long_scale",
    "heightScale": "height_scale",
}
_VECTORS = {
    "lineNumCoef": "line_num_coeff",
    "lineDenCoef": "line_den_coeff",
    "sampNumCoef": "samp_num_coeff",
    "sampDenCoef": "samp_den_coeff",
}
_REQUIRED = set(_SCALARS) - {"errBias", "errRand"} | set(_VECTORS)
_ASSIGNMENT = re.compile(r"(\w+)[ \t]*=[ \t]*(\([^)]*\)|[^;\n]*);")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_rpb(text: str, source: Path | str = "<rpb>") -> RPC:
    """An RPC from RPB text (DigitalGlobe / GaoFen layout); InputError naming ``source`` if malformed.

    Args:
        text: the RPB text (``key = value;`` and ``key = ( c1, ..., c20 );``).
        source: the file the text came from, named in errors.

    Returns:
        The RPC (``errBias`` / ``errRand`` optional).

    Raises:
        InputError: a coefficient vector does not hold 20 numbers, a scalar is not a number, a required
            key is missing, or a scale is 0.
    """
    values: dict[str, object] = {}
    for key, raw in _ASSIGNMENT.findall(text):
        if key in _VECTORS:
            numbers = re.findall(_NUMBER, raw.strip("()"))
            if len(numbers) != 20:
                raise InputError(source, f"RPC '{key}' has {len(numbers)} coefficients, expected 20")
            values[_VECTORS[key]] = [float(n) for n in numbers]
        elif key in _SCALARS:
            try:
                values[_SCALARS[key]] = float(raw.strip().strip('"'))
            except ValueError:
                raise InputError(source, f"RPC '{key}' is not a number: {raw.strip()!r}") from None
    missing = sorted(key for key in _REQUIRED if (_SCALARS.get(key) or _VECTORS.get(key)) not in values)
    if missing:
        raise InputError(source, f"not a valid RPC file: missing {', '.join(missing)}")
    rpc = RPC(**values)
    for name in ("line_scale", "samp_scale", "lat_scale", "long_scale", "height_scale"):
        if getattr(rpc, name) == 0:
            raise InputError(source, f"not a valid RPC file: {name} is 0")
    return rpc


def read_rpc(path: Path) -> RPC:
    """Parse an ``.rpb`` / ``.rpc`` sidecar file.

    Args:
        path: the sidecar (GF-2 ``.rpb``, GF-3 ``.rpc``); undecodable bytes are replaced.

    Returns:
        The RPC.

    Raises:
        InputError: the file is missing or malformed (see :func:`parse_rpb`); names the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InputError(path, "RPC file not found") from None
    return parse_rpb(text, path)


def format_rpb(rpc: RPC, *, sat_id: str = "GF2", band_id: str = "MSS") -> str:
    """RPB text in the layout GF-2 and GF-3 products use (fixtures, round trips).

    Args:
        rpc: the coefficients; an unset (or zero) ``err_bias`` is written as 1.0, ``err_rand`` as 0.0.
        sat_id: the ``satId`` written, e.g. ``"GF2"``.
        band_id: the ``bandId`` written, e.g. ``"MSS"`` or ``"PAN"``.

    Returns:
        The RPB text, readable by :func:`parse_rpb`.
    """
    lines = [f'satId = "{sat_id}";', f'bandId = "{band_id}";', 'SpecId = "RPC00B";', "BEGIN_GROUP = IMAGE"]
    lines.append(f"\terrBias = {rpc.err_bias or 1.0:10.2f};")
    lines.append(f"\terrRand = {rpc.err_rand or 0.0:10.2f};")
    for key, name in _SCALARS.items():
        if key in ("errBias", "errRand"):
            continue
        value = getattr(rpc, name)
        lines.append(f"\t{key} = {value:+.10f};" if "Scale" in key or "Offset" in key else f"\t{key} = {value};")
    for key, name in _VECTORS.items():
        coefficients = getattr(rpc, name)
        body = ",\n".join(f"\t\t\t{c:+.15E}" for c in coefficients)
        lines.append(f"\t{key} = (\n{body});")
    lines += ["END_GROUP = IMAGE", "END;", ""]
    return "\n".join(lines)


def _terms(lon: np.ndarray, lat: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The 20 RPC00B polynomial terms of normalised (L, P, H), in GDAL's order."""
    L, P, H = lon, lat, h
    one = np.ones_like(L)
    return np.stack([
        one, L, P, H, L * P, L * H, P * H, L * L, P * P, H * H,
        P * L * H, L * L * L, L * P * P, L * H * H, L * L * P, P * P * P, P * H * H, L * L * H,
        P * P * H, H * H * H,
    ])


def rpc_forward(rpc: RPC, lon, lat, height) -> tuple[np.ndarray, np.ndarray]:
    """Ground (longitude, latitude in degrees; ellipsoidal height in m) → image (sample, line).

    Integer results are pixel centres (RPC convention).

    Args:
        rpc: the image's RPC.
        lon: longitude (degrees), scalar or array; the three inputs are broadcast together.
        lat: latitude (degrees).
        height: ellipsoidal height (m).

    Returns:
        (sample, line) as float64 arrays of the broadcast shape.
    """
    lon, lat, height = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (lon, lat, height)))
    terms = _terms(
        (lon - rpc.long_off) / rpc.long_scale,
        (lat - rpc.lat_off) / rpc.lat_scale,
        (height - rpc.height_off) / rpc.height_scale,
    )

    def ratio(num, den):
        return np.tensordot(np.asarray(num), terms, axes=1) / np.tensordot(np.asarray(den), terms, axes=1)

    samp = ratio(rpc.samp_num_coeff, rpc.samp_den_coeff) * rpc.samp_scale + rpc.samp_off
    line = ratio(rpc.line_num_coeff, rpc.line_den_coeff) * rpc.line_scale + rpc.line_off
    return samp, line


def rpc_inverse(
    rpc: RPC, samp, line, height, *, iterations: int = 20, tolerance_px: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Image (sample, line) at a height → ground (longitude, latitude), by Newton iterations.

    Starts at the RPC's ground offset, with finite-difference Jacobians; stops when every residual is
    below ``tolerance_px`` or after ``iterations`` steps (the last estimate is returned either way).

    Args:
        rpc: the image's RPC.
        samp: sample (pixel-centre convention), scalar or array; the three inputs are broadcast together.
        line: line (pixel-centre convention).
        height: ellipsoidal height (m).
        iterations: the most Newton steps.
        tolerance_px: residual (px) below which the iteration stops.

    Returns:
        (longitude, latitude) in degrees, float64 arrays of the broadcast shape.
    """
    samp, line, height = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (samp, line, height)))
    lon = np.full(samp.shape, float(rpc.long_off))
    lat = np.full(samp.shape, float(rpc.lat_off))
    step_lon, step_lat = 1e-4 * rpc.long_scale, 1e-4 * rpc.lat_scale
    for _ in range(iterations):
        s0, l0 = rpc_forward(rpc, lon, lat, height)
        s1, l1 = rpc_forward(rpc, lon + step_lon, lat, height)
        s2, l2 = rpc_forward(rpc, lon, lat + step_lat, height)
        a, b = (s1 - s0) / step_lon, (s2 - s0) / step_lat
        c, d = (l1 - l0) / step_lon, (l2 - l0) / step_lat
        ds, dl = samp - s0, line - l0
        det = a * d - b * c
        lon = lon + (d * ds - b * dl) / det
        lat = lat + (a * dl - c * ds) / det
        if np.nanmax(np.abs(np.concatenate([ds.ravel(), dl.ravel()])), initial=0.0) < tolerance_px:
            break
    return lon, lat


def fit_rpc(
    ground_to_image,
    *,
    lon_range: tuple[float, float],
    lat_range: tuple[float, float],
    height_range: tuple[float, float],
    image_size: tuple[int, int],
) -> RPC:
    """Fit RPC00B numerators (denominators 1) to a ground → image function, by least squares.

    Used to build realistic fixtures from a simple physical sensor model; exact for models up to
    cubic in (lon, lat, h). Sampled on an 11 × 11 × 5 grid of the ranges.

    Args:
        ground_to_image: ``f(lon, lat, h) -> (sample, line)`` on arrays (pixel-centre convention).
        lon_range: (min, max) longitude (degrees) of the image.
        lat_range: (min, max) latitude (degrees).
        height_range: (min, max) ellipsoidal height (m).
        image_size: (width, height) of the image (px).

    Returns:
        The fitted RPC (``err_bias`` 1.0, ``err_rand`` 0.5).
    """
    lon_off, lat_off = sum(lon_range) / 2, sum(lat_range) / 2
    h_off = sum(height_range) / 2
    lon_scale = max((lon_range[1] - lon_range[0]) / 2, 1e-6)
    lat_scale = max((lat_range[1] - lat_range[0]) / 2, 1e-6)
    h_scale = max((height_range[1] - height_range[0]) / 2, 1.0)
    grid = np.linspace(-1, 1, 11)
    L, P, H = (v.ravel() for v in np.meshgrid(grid, grid, np.linspace(-1, 1, 5), indexing="ij"))
    samp, line = ground_to_image(L * lon_scale + lon_off, P * lat_scale + lat_off, H * h_scale + h_off)
    width, height = image_size
    samp_off, line_off = (width - 1) / 2, (height - 1) / 2
    samp_scale, line_scale = max(width / 2, 1.0), max(height / 2, 1.0)
    A = _terms(L, P, H).T
    samp_num = np.linalg.lstsq(A, (samp - samp_off) / samp_scale, rcond=None)[0]
    line_num = np.linalg.lstsq(A, (line - line_off) / line_scale, rcond=None)[0]
    den = [1.0] + [0.0] * 19
    return RPC(
        height_off=h_off, height_scale=h_scale, lat_off=lat_off, lat_scale=lat_scale,
        line_den_coeff=den, line_num_coeff=[float(v) for v in line_num], line_off=line_off,
        line_scale=line_scale, long_off=lon_off, long_scale=lon_scale, samp_den_coeff=den,
        samp_num_coeff=[float(v) for v in samp_num], samp_off=samp_off, samp_scale=samp_scale,
        err_bias=1.0, err_rand=0.5,
    )


# --------------------------------------------------------------------------------------------------
# Orthorectification


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone of a point (the regular 6° zones, without the Norway/Svalbard exceptions).

    Args:
        lon: longitude (degrees).
        lat: latitude (degrees); ≥ 0 gives the northern zone.

    Returns:
        The CRS, EPSG:326xx or EPSG:327xx.
    """
    zone = min(max(int(math.floor((lon + 180.0) / 6.0)) + 1, 1), 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def image_corners(rpc: RPC, width: int, height: int, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground (lon, lat) of the image's outer corners (pixel edges), clockwise from top-left.

    Args:
        rpc: the image's RPC.
        width: image width (px).
        height: image height (px).
        h: the ellipsoidal height (m) of the ground.

    Returns:
        (longitude, latitude) arrays of the 4 corners, degrees.
    """
    samp = np.array([-0.5, width - 0.5, width - 0.5, -0.5])
    line = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
    return rpc_inverse(rpc, samp, line, h)


def footprint_lonlat(rpc: RPC, width: int, height: int, h: float, *, points: int = 8) -> np.ndarray:
    """The image outline on the ground, (N, 2) lon/lat, densified along the edges.

    Args:
        rpc: the image's RPC.
        width: image width (px).
        height: image height (px).
        h: the ellipsoidal height (m) of the ground.
        points: points per edge.

    Returns:
        (4 · ``points``, 2) longitude/latitude (degrees), clockwise from the top-left corner, not closed.
    """
    t = np.linspace(0, 1, points, endpoint=False)
    w, hh = width - 0.5, height - 0.5
    samp = np.concatenate([-0.5 + t * width, np.full(points, w), w - t * width, np.full(points, -0.5)])
    line = np.concatenate([np.full(points, -0.5), -0.5 + t * height, np.full(points, hh), hh - t * height])
    lon, lat = rpc_inverse(rpc, samp, line, h)
    return np.column_stack([lon, lat])


def gsd_m(rpc: RPC, width: int, height: int, h: float) -> float:
    """Mean ground sampling distance (m) at the image centre, from the RPCs.

    Args:
        rpc: the image's RPC.
        width: image width (px).
        height: image height (px).
        h: the ellipsoidal height (m) of the ground.

    Returns:
        The mean of the one-pixel steps along samples and lines, in metres (measured in UTM).
    """
    cs, cl = (width - 1) / 2, (height - 1) / 2
    lon, lat = rpc_inverse(rpc, [cs, cs + 1, cs], [cl, cl, cl + 1], h)
    crs = utm_crs(float(lon[0]), float(lat[0]))
    x, y = transform_points("EPSG:4326", crs, lon.tolist(), lat.tolist())
    across = math.hypot(x[1] - x[0], y[1] - y[0])
    along = math.hypot(x[2] - x[0], y[2] - y[0])
    return (across + along) / 2


def ortho_grid(
    rpc: RPC, width: int, height: int, h: float, crs: CRS, resolution: float
) -> tuple[Affine, int, int]:
    """The grid covering the image's ground footprint, on the lattice of multiples of ``resolution``.

    Args:
        rpc: the image's RPC.
        width: image width (px).
        height: image height (px).
        h: the ellipsoidal height (m) of the ground.
        crs: the target CRS.
        resolution: the pixel size, in ``crs`` units.

    Returns:
        (transform, width, height) of the north-up grid.
    """
    outline = footprint_lonlat(rpc, width, height, h, points=16)
    xs, ys = transform_points("EPSG:4326", crs, outline[:, 0].tolist(), outline[:, 1].tolist())
    x0 = round(math.floor(min(xs) / resolution) * resolution, 9)
    y1 = round(math.ceil(max(ys) / resolution) * resolution, 9)
    cols = math.ceil((max(xs) - x0) / resolution)
    rows = math.ceil((y1 - min(ys)) / resolution)
    return Affine(resolution, 0, x0, 0, -resolution, y1), cols, rows


def rpc_warp_options(rpc: RPC, *, height: float | None, dem: Path | None, dem_srs: str | None) -> dict:
    """GDAL RPC transformer options: a DEM when given, else a constant height (config or HEIGHT_OFF).

    Args:
        rpc: the image's RPC (its height offset is the default height).
        height: constant ellipsoidal height (m); with a DEM, the value used where the DEM has no data.
        dem: a DEM of ellipsoidal heights, or None.
        dem_srs: the DEM's SRS with its vertical datum (e.g. ``"EPSG:4326+5773"``), or None.

    Returns:
        The ``RPC_*`` options for :func:`rasterio.warp.reproject`.
    """
    if dem is not None:
        options = {"RPC_DEM": str(dem), "RPC_DEMINTERPOLATION": "bilinear"}
        if dem_srs:
            options["RPC_DEM_SRS"] = dem_srs
        if height is not None:
            options["RPC_DEM_MISSING_VALUE"] = height
        return options
    return {"RPC_HEIGHT": float(rpc.height_off if height is None else height)}


def rpc_vrt(source: Path, rpc: RPC, bands: list[int]) -> str:
    """A VRT (XML text) of ``bands`` of a sensor-geometry image carrying ``rpc`` in its RPC domain.

    GDAL's warper takes the RPCs from the source dataset's metadata, so the sidecar (whatever its
    name: ``.rpb`` or GF-3's ``.rpc``) is attached through this wrapper; no pixel is copied.

    Args:
        source: the sensor-geometry image.
        rpc: its RPC.
        bands: the source bands (1-based) the VRT exposes, in order, as bands 1..n.

    Returns:
        The VRT XML text.

    Raises:
        rasterio.errors.RasterioIOError: ``source`` cannot be opened.
    """
    from xml.sax.saxutils import escape

    from rasterio.dtypes import _gdal_typename

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(source) as src:
            width, height, dtypes = src.width, src.height, src.dtypes
    items = "".join(
        f'<MDI key="{escape(key)}">{escape(value)}</MDI>' for key, value in rpc.to_gdal().items()
    )
    band_xml = "".join(
        f'<VRTRasterBand dataType="{_gdal_typename(dtypes[b - 1])}" band="{i}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{escape(str(Path(source).resolve()))}</SourceFilename>'
        f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for i, b in enumerate(bands, start=1)
    )
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f'<Metadata domain="RPC">{items}</Metadata>{band_xml}</VRTDataset>'
    )


def orthorectify(
    source: Path,
    destination,
    *,
    rpc: RPC,
    bands: list[int],
    dst_bands: list[int],
    resampling: Resampling = Resampling.bilinear,
    src_nodata: float | None,
    dst_nodata: float,
    options: dict,
    threads: int = 1,
) -> None:
    """Warp ``bands`` of a sensor-geometry image into ``dst_bands`` of an open dataset, with RPCs.

    GDAL warps in chunks (bounded memory) straight from the source file.

    Args:
        source: the sensor-geometry image.
        destination: an open rasterio dataset (mode ``w`` or ``r+``) that carries the target CRS and transform.
        rpc: the source's RPC.
        bands: the source bands (1-based) to warp.
        dst_bands: the destination bands (1-based) they go to, same length.
        resampling: the resampling method.
        src_nodata: the source's nodata value, or None.
        dst_nodata: the value written where there is no source data.
        options: GDAL RPC transformer options (see :func:`rpc_warp_options`).
        threads: GDAL warp threads.

    Raises:
        rasterio.errors.RasterioError: GDAL cannot open the source or warp it (e.g. a missing DEM).
    """
    vrt = rpc_vrt(source, rpc, bands)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(vrt) as src:
            reproject(
                rasterio.band(src, list(range(1, len(bands) + 1))),
                rasterio.band(destination, dst_bands),
                rpcs=rpc,
                src_crs="EPSG:4326",
                src_nodata=src_nodata,
                dst_nodata=dst_nodata,
                resampling=resampling,
                num_threads=threads,
                warp_mem_limit=128,
                **options,
            )


def ortho_target(
    rpc: RPC, width: int, height: int, h: float, *, crs: str | None, resolution: float | None,
    default_resolution: float | None = None,
) -> tuple[CRS, float]:
    """CRS and pixel size of an orthorectified product: the given ones, else UTM and the GSD.

    Args:
        rpc: the image's RPC.
        width: image width (px).
        height: image height (px).
        h: the ellipsoidal height (m) of the ground.
        crs: the target CRS (any form :meth:`CRS.from_user_input` takes); None: the UTM zone of the centre.
        resolution: the pixel size in the target CRS's units; None: ``default_resolution``, else the GSD.
        default_resolution: the product's nominal GSD (m), used instead of measuring it from the RPCs.

    Returns:
        The CRS and pixel size; a GSD in metres is converted to degrees for a geographic CRS.
    """
    if crs:
        target = CRS.from_user_input(crs)
    else:
        lon, lat = rpc_inverse(rpc, [(width - 1) / 2], [(height - 1) / 2], h)
        target = utm_crs(float(lon[0]), float(lat[0]))
    if resolution:
        return target, float(resolution)
    gsd = default_resolution or round(gsd_m(rpc, width, height, h), 2)
    if not target.is_projected:  # metres → degrees at the scene centre
        gsd = gsd / 111_320.0
    return target, gsd
