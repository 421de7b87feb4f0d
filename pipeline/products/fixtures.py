"""Synthetic provider products with the real structure: GF-2 PMS L1A, GF-3 SAR, Sentinel-2 SAFE.

No real GF-2 / GF-3 product can be shipped, so tests and demos build them: the file names, folder
layout, XML tags, RPB syntax and value ranges follow the delivered products; the pixels come from
one procedural ground (:class:`Scenery`, the textures of :mod:`pipeline.synthetic`) so that the
three sensors see the same place and co-register.

RPC images are made from their own RPCs: each sensor pixel (sample, line) is put on the ground by
inverting the RPC model at the terrain height, and the ground is sampled there. An orthorectification
that honours the RPCs therefore gives back the ground exactly (up to resampling) — the property the
tests check.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC
from scipy import ndimage

from pipeline.products.rpc import fit_rpc, format_rpb, rpc_inverse
from pipeline.products.sentinel2 import BAND_IDS

UTM = CRS.from_epsg(32650)
ORIGIN = (517_200.0, 3_531_600.0)  # near Hefei (31.9 N, 117.2 E), as pipeline.synthetic
GROUND_RES = 4.0
TERRAIN_HEIGHT = 35.0  # m above the ellipsoid, flat


# --------------------------------------------------------------------------------------------------
# The ground


class Scenery:
    """Reflectance of a procedural ground (4 bands at t1 and t2) on a UTM lattice, sampled anywhere."""

    def __init__(self, size_m: float = 3200.0, seed: int = 0, origin: tuple[float, float] = ORIGIN) -> None:
        from pipeline.synthetic import _Ground

        self.origin = origin
        self.pixels = int(math.ceil(size_m / GROUND_RES))
        render = _Ground(seed).render(0, 0, self.pixels, self.pixels)
        self.t1, self.t2, self.boost = render.t1, render.t2, render.sar_boost
        self.to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
        self.to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)

    @property
    def size_m(self) -> float:
        return self.pixels * GROUND_RES

    @property
    def centre_lonlat(self) -> tuple[float, float]:
        x = self.origin[0] + self.size_m / 2
        y = self.origin[1] - self.size_m / 2
        lon, lat = self.to_lonlat.transform(x, y)
        return float(lon), float(lat)

    def sample(self, lon: np.ndarray, lat: np.ndarray, *, date: int = 1, what: str = "reflectance") -> np.ndarray:
        """Bilinear samples at lon/lat: (4, ...) reflectance, or (...) SAR boost; NaN outside."""
        x, y = self.to_utm.transform(lon, lat)
        col = (np.asarray(x) - self.origin[0]) / GROUND_RES - 0.5
        row = (self.origin[1] - np.asarray(y)) / GROUND_RES - 0.5
        inside = (col >= 0) & (col <= self.pixels - 1) & (row >= 0) & (row <= self.pixels - 1)
        coords = np.stack([row.ravel(), col.ravel()])
        if what == "boost":
            out = ndimage.map_coordinates(self.boost, coords, order=1, mode="nearest").reshape(row.shape)
            return np.where(inside, out, np.nan)
        image = self.t1 if date == 1 else self.t2
        out = np.stack([ndimage.map_coordinates(b, coords, order=1, mode="nearest").reshape(row.shape) for b in image])
        return np.where(inside[None], out, np.nan)


def sensor_model_rpc(
    scenery: Scenery, *, width: int, height: int, gsd: float, heading_deg: float,
    parallax: float = 0.25, curvature: float = 2e-4, centre_offset_m: tuple[float, float] = (0.0, 0.0),
) -> RPC:
    """RPCs of a push-broom / SAR-like view: a rotated grid of ``gsd`` m pixels centred on the scene.

    Rows run along the track (``heading_deg`` from north), columns across it; ``parallax`` is the
    across-track shift (m per m of height, i.e. tan of the off-nadir angle) and ``curvature`` a
    small across-track scale change (panoramic distortion), so the model is not a plain affine.
    """
    lon0, lat0 = scenery.centre_lonlat
    to_utm = scenery.to_utm
    xc, yc = to_utm.transform(lon0, lat0)
    xc, yc = xc + centre_offset_m[0], yc + centre_offset_m[1]
    theta = math.radians(heading_deg)
    half = 0.5 * gsd * max(width, height)

    def ground_to_image(lon, lat, h):
        x, y = to_utm.transform(lon, lat)
        e, n = np.asarray(x) - xc, np.asarray(y) - yc
        across = e * math.cos(theta) - n * math.sin(theta) + parallax * (np.asarray(h) - TERRAIN_HEIGHT)
        along = -(e * math.sin(theta) + n * math.cos(theta))
        across = across * (1 + curvature * (across / half) ** 2)
        return (width - 1) / 2 + across / gsd, (height - 1) / 2 + along / gsd

    span = 0.75 * gsd * math.hypot(width, height) / 111_320.0
    return fit_rpc(
        ground_to_image,
        lon_range=(lon0 - span / math.cos(math.radians(lat0)), lon0 + span / math.cos(math.radians(lat0))),
        lat_range=(lat0 - span, lat0 + span),
        height_range=(TERRAIN_HEIGHT - 500, TERRAIN_HEIGHT + 500),
        image_size=(width, height),
    )


def sensor_lonlat(rpc: RPC, width: int, height: int, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ground lon/lat of every pixel centre of the sensor image (rows ``rows``) at the terrain height."""
    r = np.arange(height)[rows or slice(None)]
    samp, line = np.meshgrid(np.arange(width, dtype=np.float64), r.astype(np.float64))
    return rpc_inverse(rpc, samp, line, TERRAIN_HEIGHT)


def _with(base: Path, suffix: str) -> Path:
    """``base`` + ``suffix``: product names contain dots (E117.2), so Path.with_suffix would cut them."""
    return base.with_name(base.name + suffix)


def _write_plain(path: Path, array: np.ndarray, **profile) -> None:
    import warnings

    array = array if array.ndim == 3 else array[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
            dtype=array.dtype, compress="deflate", **profile,
        ) as dst:
            dst.write(array)


def _write_jpeg(path: Path, array: np.ndarray) -> None:
    """A quick-look JPEG (3 bands, byte) as the products ship them."""
    rgb = np.nan_to_num(array[:3].astype(np.float32))
    lo, hi = np.percentile(rgb, (2, 98)) if rgb.size else (0, 1)
    byte = np.clip((rgb - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="JPEG", width=byte.shape[2], height=byte.shape[1], count=3, dtype="uint8") as dst:
            dst.write(byte)
    path.with_name(path.name + ".aux.xml").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# GF-2 PMS L1A


@dataclass(frozen=True)
class WrittenProduct:
    path: Path  # folder or archive, as delivered
    name: str
    rpc: RPC | None
    height_m: float
    acquired: dt.datetime


def gf2_name(lon: float, lat: float, date: dt.date, camera: int, number: int = 4781234) -> str:
    return f"GF2_PMS{camera}_E{lon:.1f}_N{lat:.1f}_{date:%Y%m%d}_L1A{number:010d}"


def gf2_xml(*, name: str, camera: int, acquired: dt.datetime, width: int, height: int, gsd: float,
            cloud: float, corners: dict[str, tuple[float, float]], product_id: int = 1877364,
            kind: str = "MSS") -> str:
    bands = "1,2,3,4" if kind == "MSS" else "5"
    corner_xml = "".join(
        f"    <{c}Latitude>{lat:.6f}</{c}Latitude>\n    <{c}Longitude>{lon:.6f}</{c}Longitude>\n"
        for c, (lon, lat) in corners.items()
    )
    start = acquired - dt.timedelta(seconds=7)
    end = acquired + dt.timedelta(seconds=7)
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<ProductMetaData>\n'
        f"    <SatelliteID>GF2</SatelliteID>\n    <SensorID>PMS{camera}</SensorID>\n"
        f"    <ReceiveTime>{acquired:%Y-%m-%d %H:%M:%S}</ReceiveTime>\n    <OrbitID>30712</OrbitID>\n"
        "    <ProduceType>STANDARD</ProduceType>\n    <SceneID>6412354</SceneID>\n"
        f"    <ProductID>{product_id}</ProductID>\n    <ProductLevel>LEVEL1A</ProductLevel>\n"
        "    <ProductQuality>\n    </ProductQuality>\n    <ProductQualityReport>\n    </ProductQualityReport>\n"
        "    <ProductFormat>GEOTIFF</ProductFormat>\n"
        f"    <ProduceTime>{acquired + dt.timedelta(hours=30):%Y-%m-%d %H:%M:%S}</ProduceTime>\n"
        f"    <Bands>{bands}</Bands>\n    <ScenePath>23</ScenePath>\n    <SceneRow>128</SceneRow>\n"
        "    <SatPath>23</SatPath>\n    <SatRow>128</SatRow>\n    <SceneCount>1</SceneCount>\n    <SceneShift>1</SceneShift>\n"
        f"    <StartTime>{start:%Y-%m-%d %H:%M:%S}</StartTime>\n    <EndTime>{end:%Y-%m-%d %H:%M:%S}</EndTime>\n"
        f"    <CenterTime>{acquired:%Y-%m-%d %H:%M:%S}</CenterTime>\n"
        "    <StartLine>0</StartLine>\n    <EndLine>0</EndLine>\n"
        f"    <ImageGSD>{gsd:g}</ImageGSD>\n    <WidthInPixels>{width}</WidthInPixels>\n"
        f"    <HeightInPixels>{height}</HeightInPixels>\n    <WidthInMeters>{width * gsd:.0f}</WidthInMeters>\n"
        f"    <HeightInMeters>{height * gsd:.0f}</HeightInMeters>\n    <CloudPercent>{cloud:g}</CloudPercent>\n"
        "    <QualityInfo>0</QualityInfo>\n    <PixelBits>16</PixelBits>\n    <ValidPixelBits>10</ValidPixelBits>\n"
        "    <RollViewingAngle>0.000</RollViewingAngle>\n    <PitchViewingAngle>0.000</PitchViewingAngle>\n"
        "    <RollSatelliteAngle>-4.216</RollSatelliteAngle>\n    <PitchSatelliteAngle>0.015</PitchSatelliteAngle>\n"
        "    <YawSatelliteAngle>3.134</YawSatelliteAngle>\n    <SolarAzimuth>142.315</SolarAzimuth>\n"
        "    <SolarZenith>24.672</SolarZenith>\n    <SatelliteAzimuth>101.863</SatelliteAzimuth>\n"
        "    <SatelliteZenith>85.114</SatelliteZenith>\n    <GainMode>G0,G0,G0,G0</GainMode>\n"
        "    <IntegrationTime>0.000125</IntegrationTime>\n    <IntegrationLevel>S4,S4,S4,S4</IntegrationLevel>\n"
        "    <MapProjection></MapProjection>\n    <EarthEllipsoid></EarthEllipsoid>\n    <ZoneNo></ZoneNo>\n"
        "    <ResamplingKernel></ResamplingKernel>\n    <HeightMode></HeightMode>\n"
        "    <MtfCorrection>LAB</MtfCorrection>\n    <RelativeCorrectionData></RelativeCorrectionData>\n"
        + corner_xml
        + "</ProductMetaData>\n"
    )


def _corners(rpc: RPC, width: int, height: int) -> dict[str, tuple[float, float]]:
    lon, lat = rpc_inverse(rpc, [0, width - 1, width - 1, 0], [0, 0, height - 1, height - 1], TERRAIN_HEIGHT)
    return dict(zip(("TopLeft", "TopRight", "BottomRight", "BottomLeft"), zip(lon.tolist(), lat.tolist())))


def write_gf2_product(
    root: Path, scenery: Scenery, *, date: dt.date = dt.date(2019, 5, 1), camera: int = 1,
    size: int = 640, gsd: float = 3.2, heading_deg: float = 8.0, pan: bool = False, cloud: float = 2.0,
    seed: int = 0, archive: str | None = None, centre_offset_m: tuple[float, float] = (0.0, 0.0),
) -> WrittenProduct:
    """A GF-2 PMS L1A product folder (or ``archive`` 'tar.gz' / 'zip') under ``root``.

    MSS: 4 bands uint16 DN (10-bit range) of the t1 ground, sensor geometry, RPB, XML, quick-looks.
    PAN (``pan``): one band at gsd / 4, its own RPB and XML.
    """
    acquired = dt.datetime.combine(date, dt.time(11, 23, 53))
    lon0, lat0 = scenery.centre_lonlat
    name = gf2_name(lon0, lat0, date, camera)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 22])
    gains = np.array([780.0, 720.0, 700.0, 640.0])
    views = [("MSS", size, gsd, 4)] + ([("PAN", size * 4, gsd / 4, 1)] if pan else [])
    mss_rpc = None
    for kind, pixels, pixel_gsd, _ in views:
        rpc = sensor_model_rpc(scenery, width=pixels, height=pixels, gsd=pixel_gsd, heading_deg=heading_deg,
                               centre_offset_m=centre_offset_m)
        dn = np.zeros((4 if kind == "MSS" else 1, pixels, pixels), np.uint16)
        for r0 in range(0, pixels, 256):
            rows = slice(r0, min(pixels, r0 + 256))
            lon, lat = sensor_lonlat(rpc, pixels, pixels, rows)
            reflectance = scenery.sample(lon, lat, date=1)
            if kind == "PAN":
                reflectance = reflectance[:3].mean(axis=0, keepdims=True)
                band_gains = np.array([900.0])
            else:
                band_gains = gains
            values = 45 + band_gains[:, None, None] * np.nan_to_num(reflectance, nan=0.02)
            values += rng.normal(0, 2.0, values.shape)
            dn[:, rows] = np.clip(np.rint(values), 1, 1023).astype(np.uint16)
        base = folder / f"{name}-{kind}{camera}"
        _write_plain(_with(base, ".tiff"), dn)
        _with(base, ".rpb").write_text(format_rpb(rpc, sat_id="GF2", band_id="MSS" if kind == "MSS" else "PAN"))
        _with(base, ".xml").write_text(gf2_xml(
            name=name, camera=camera, acquired=acquired, width=pixels, height=pixels, gsd=pixel_gsd,
            cloud=cloud, corners=_corners(rpc, pixels, pixels), kind=kind,
        ))
        quick = dn[:3][:, ::8, ::8] if kind == "MSS" else np.repeat(dn[:, ::16, ::16], 3, axis=0)
        _write_jpeg(_with(base, ".jpg"), quick[::-1])
        _write_jpeg(folder / f"{base.name}_thumb.jpg", quick[::-1][:, ::4, ::4])
        if kind == "MSS":
            mss_rpc = rpc
    path = _archive(folder, archive)
    return WrittenProduct(path, name, mss_rpc, TERRAIN_HEIGHT, acquired)


# --------------------------------------------------------------------------------------------------
# GF-3


def gf3_name(lon: float, lat: float, date: dt.date, mode: str, level: str, pol: str, number: int = 4795305) -> str:
    return f"GF3_KAS_{mode}_020008_E{lon:.1f}_N{lat:.1f}_{date:%Y%m%d}_{level}_{pol}_L1{number:010d}"


def gf3_meta_xml(*, acquired: dt.datetime, width: int, height: int, mode: str, polar_mode: str,
                 product_type: str, level: str, qualify: dict[str, float | None],
                 calibration: dict[str, float | None], centre: tuple[float, float],
                 corners: dict[str, tuple[float, float]], looks: tuple[int, int] = (1, 1),
                 spacing: tuple[float, float] = (5.0, 5.0)) -> str:
    def value(v):
        return "NULL" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v))

    pols = ("HH", "HV", "VH", "VV")
    corner_xml = "".join(
        f"<{c}><latitude>{lat:.6f}</latitude><longitude>{lon:.6f}</longitude></{c}>"
        for c, (lon, lat) in corners.items()
    )
    end = acquired + dt.timedelta(seconds=4.2)
    gps = "".join(
        f"<GPSParam><TimeStamp>{acquired + dt.timedelta(seconds=k):%Y-%m-%d %H:%M:%S}.000000</TimeStamp>"
        f"<xPosition>{-2581234.5 + 1200 * k:.3f}</xPosition><yPosition>{4969876.2 - 4100 * k:.3f}</yPosition>"
        f"<zPosition>{4156789.8 + 5700 * k:.3f}</zPosition><xVelocity>1203.1</xVelocity>"
        f"<yVelocity>-4101.7</yVelocity><zVelocity>5702.3</zVelocity></GPSParam>"
        for k in range(-4, 5)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<product>\n'
        "  <segmentID>20008</segmentID>\n  <sceneID>88</sceneID>\n  <satellite>GF3</satellite>\n"
        "  <orbitID>20008</orbitID>\n  <orbitType>ACC</orbitType>\n  <attiType>GPS</attiType>\n"
        "  <Direction>ASC</Direction>\n  <productID>4795305</productID>\n"
        "  <DocumentIdentifier>CAST</DocumentIdentifier>\n  <IsZeroDopplerSteering>1</IsZeroDopplerSteering>\n"
        "  <Station>KAS</Station>\n"
        "  <sensor>\n    <sensorID>SAR</sensorID>\n"
        f"    <imagingMode>{mode}</imagingMode>\n    <lamda>0.055517</lamda>\n"
        "    <RadarCenterFrequency>5.4</RadarCenterFrequency>\n    <satVelocity>7563.25</satVelocity>\n"
        "    <lookDirection>R</lookDirection>\n    <antennaMode>0</antennaMode>\n    <agcMode>0</agcMode>\n"
        f"    <polarParams><polar><polarMode>{polar_mode}</polarMode></polar></polarParams>\n"
        "    <waveParams><wave><waveCode>64</waveCode><centerLookAngle>36.2</centerLookAngle>"
        "<prf>2491.3</prf><proBandwidth>60</proBandwidth><sampleRate>66.66</sampleRate>"
        "<sampleDelay>0.0049</sampleDelay><bandWidth>60</bandWidth><pulseWidth>45</pulseWidth>"
        "<frameLength>0</frameLength><valueBits>8</valueBits><averageAltitude>35.0</averageAltitude></wave></waveParams>\n"
        "  </sensor>\n"
        f"  <platform>\n    <CenterTime>{acquired:%Y-%m-%d %H:%M:%S}.500000</CenterTime>\n"
        "    <Rs>899423.7</Rs>\n    <satVelocity>7563.25</satVelocity>\n    <RollAngle>0.0</RollAngle>\n"
        "    <PitchAngle>0.0</PitchAngle>\n    <YawAngle>0.0</YawAngle>\n    <Xs>-2581234.5</Xs>\n"
        "    <Ys>4969876.2</Ys>\n    <Zs>4156789.8</Zs>\n  </platform>\n"
        f"  <GPS>{gps}</GPS>\n"
        "  <productinfo>\n    <NominalResolution>5</NominalResolution>\n"
        f"    <WidthInMeters>{width * spacing[0]:.1f}</WidthInMeters>\n"
        f"    <productLevel>{level}</productLevel>\n    <productType>{product_type}</productType>\n"
        "    <productFormat>TIFF</productFormat>\n"
        f"    <productGentime>{acquired + dt.timedelta(hours=6):%Y-%m-%d %H:%M:%S}</productGentime>\n"
        f"    <productPolar>{'/'.join(p for p in pols if qualify.get(p) is not None) or polar_mode}</productPolar>\n"
        "  </productinfo>\n"
        "  <imageinfo>\n"
        f"    <imagingTime><start>{acquired:%Y-%m-%d %H:%M:%S}.107966</start><end>{end:%Y-%m-%d %H:%M:%S}.523144</end></imagingTime>\n"
        "    <nearRange>956789.25</nearRange>\n    <refRange>960123.5</refRange>\n"
        "    <eqvFs>66.66</eqvFs>\n    <eqvPRF>2491.3</eqvPRF>\n"
        f"    <center><latitude>{centre[1]:.6f}</latitude><longitude>{centre[0]:.6f}</longitude></center>\n"
        f"    <corner>{corner_xml}</corner>\n"
        f"    <width>{width}</width>\n    <height>{height}</height>\n"
        f"    <widthspace>{spacing[0]}</widthspace>\n    <heightspace>{spacing[1]}</heightspace>\n"
        "    <sceneShift>0</sceneShift>\n    <imagebit>16</imagebit>\n"
        "    <QualifyValue>" + "".join(f"<{p}>{value(qualify.get(p))}</{p}>" for p in pols) + "</QualifyValue>\n"
        "    <echoSaturation>" + "".join(f"<{p}>0</{p}>" for p in pols) + "</echoSaturation>\n"
        "  </imageinfo>\n"
        "  <processinfo>\n    <algorithm>CS</algorithm>\n"
        "    <CalibrationConst>" + "".join(f"<{p}>{value(calibration.get(p))}</{p}>" for p in pols) + "</CalibrationConst>\n"
        "    <AzFdc0>0.0</AzFdc0>\n    <AzFdc1>0.0</AzFdc1>\n"
        f"    <MultilookRange>{looks[0]}</MultilookRange>\n    <MultilookAzimuth>{looks[1]}</MultilookAzimuth>\n"
        "    <DoIQComp>1</DoIQComp>\n    <DoChaDistortionComp>1</DoChaDistortionComp>\n"
        "    <RangeWeightType>1</RangeWeightType>\n    <RangeWeightPara>1.0,0.0</RangeWeightPara>\n"
        "    <incidenceAngleNearRange>34.12</incidenceAngleNearRange>\n"
        "    <incidenceAngleFarRange>36.48</incidenceAngleFarRange>\n"
        "    <DopplerParametersReferenceTime>6.4</DopplerParametersReferenceTime>\n"
        "    <DopplerCentroidCoefficients><d0>-12.1</d0><d1>0.5</d1><d2>0.0</d2><d3>0.0</d3><d4>0.0</d4></DopplerCentroidCoefficients>\n"
        "  </processinfo>\n</product>\n"
    )


def write_gf3_product(
    root: Path, scenery: Scenery, *, date: dt.date = dt.date(2021, 6, 16), mode: str = "FSII",
    polarisations: tuple[str, ...] = ("HH", "HV"), slc: bool = False, size: int = 560, gsd: float = 5.0,
    heading_deg: float = -11.0, calibration_const: dict[str, float] | None = None, seed: int = 0,
    archive: str | None = None, sigma0_db: float | np.ndarray | None = None, looks: int = 4,
    qualify_override: dict[str, float | None] | None = None,
) -> WrittenProduct:
    """A GF-3 product (SLC L1A with I/Q bands, or detected L1B uint16) of the t2 ground.

    sigma0 is simulated from the ground (speckled, double bounce on new buildings) or given as
    ``sigma0_db`` (a constant or a (size, size) array in sensor geometry, for calibration checks).
    QualifyValue is each polarisation's maximum amplitude before quantisation, as in real products.
    """
    from pipeline.synthetic import SIGMA0_CALIBRATION, simulate_sar_amplitude

    acquired = dt.datetime.combine(date, dt.time(22, 5, 36))
    lon0, lat0 = scenery.centre_lonlat
    level = "L1A" if slc else "L1B"
    polar_mode = "".join(polarisations) if len(polarisations) <= 2 else "AHV"
    name = gf3_name(lon0, lat0, date, mode, level, polar_mode)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    constants = calibration_const or {"HH": 31.48, "HV": 31.52, "VH": 31.50, "VV": 31.46}
    rpc = sensor_model_rpc(scenery, width=size, height=size, gsd=gsd, heading_deg=heading_deg, parallax=-0.7,
                           curvature=5e-4)
    rng = np.random.default_rng([seed, 33])
    optical = np.zeros((size, size), np.float32)
    boost = np.ones((size, size), np.float32)
    for r0 in range(0, size, 256):
        rows = slice(r0, min(size, r0 + 256))
        lon, lat = sensor_lonlat(rpc, size, size, rows)
        optical[rows] = np.nan_to_num(scenery.sample(lon, lat, date=2).mean(axis=0), nan=0.05)
        boost[rows] = np.nan_to_num(scenery.sample(lon, lat, what="boost"), nan=1.0)
    qualify: dict[str, float | None] = {}
    calibration: dict[str, float | None] = {}
    for k, pol in enumerate(polarisations):
        if sigma0_db is None:
            amplitude = simulate_sar_amplitude(optical, looks=looks, rng=rng) * boost
            sigma0 = SIGMA0_CALIBRATION * amplitude.astype(np.float64) ** 2 * (1.0 if pol[0] == pol[1] else 0.2)
        else:
            sigma0 = np.broadcast_to(10 ** (np.asarray(sigma0_db, np.float64) / 10), (size, size))
        K = constants[pol]
        amplitude = np.sqrt(sigma0 * 10 ** (K / 10))  # A such that 10 log10(A²) − K = sigma0_dB
        qv = float(amplitude.max())
        stem = folder / f"{gf3_name(lon0, lat0, date, mode, level, pol)}"
        if slc:
            phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
            iq = np.stack([amplitude * np.cos(phase), amplitude * np.sin(phase)]) / qv * 32767
            data = np.clip(np.rint(iq), -32767, 32767).astype(np.int16)
            data[:, (data[0] == 0) & (data[1] == 0)] = 1  # keep valid pixels off the nodata value
        else:
            data = np.clip(np.rint(amplitude / qv * 65535), 1, 65535).astype(np.uint16)[None]
        _write_plain(_with(stem, ".tiff"), data)
        _with(stem, ".rpc").write_text(format_rpb(rpc, sat_id="GF3", band_id=pol))
        qualify[pol], calibration[pol] = qv, K
        quick = np.abs(data[:1].astype(np.float32))[:, ::8, ::8]
        _write_jpeg(_with(stem, ".jpg"), np.repeat(quick, 3, axis=0))
        _write_jpeg(folder / f"{stem.name}.thumb.jpg", np.repeat(quick[:, ::4, ::4], 3, axis=0))
    if qualify_override:
        qualify.update(qualify_override)
    base = folder / name
    _with(base, ".meta.xml").write_text(gf3_meta_xml(
        acquired=acquired, width=size, height=size, mode=mode, polar_mode=polar_mode,
        product_type="SLC" if slc else "DGM", level="1A" if slc else "1B", qualify=qualify,
        calibration=calibration, centre=(lon0, lat0), corners=_gf3_corners(rpc, size),
        looks=(1, 1) if slc else (2, 2), spacing=(gsd, gsd),
    ))
    incidence = np.linspace(34.12, 36.48, 101)
    _with(base, ".incidence.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<Incidence>\n'
        f"  <numberofIncidenceValue>{incidence.size}</numberofIncidenceValue>\n"
        + "".join(f"  <incidenceValue>{v:.6f}</incidenceValue>\n" for v in incidence)
        + "</Incidence>\n"
    )
    path = _archive(folder, archive)
    return WrittenProduct(path, name, rpc, TERRAIN_HEIGHT, acquired)


def _gf3_corners(rpc: RPC, size: int) -> dict[str, tuple[float, float]]:
    corners = _corners(rpc, size, size)
    return {"topLeft": corners["TopLeft"], "topRight": corners["TopRight"],
            "bottomLeft": corners["BottomLeft"], "bottomRight": corners["BottomRight"]}


# --------------------------------------------------------------------------------------------------
# Sentinel-2 SAFE

S2_NATIVE_RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
                 "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20, "SCL": 20}
_S2_BAND_OF_GROUND = {"B02": 0, "B03": 1, "B04": 2, "B08": 3, "B05": 2, "B06": 3, "B07": 3, "B8A": 3,
                      "B11": 2, "B12": 2, "B01": 0, "B09": 3, "B10": 0}


def s2_name(level: str, sensing: dt.datetime, baseline: str, tile: str = "50SNA", mission: str = "S2B") -> str:
    generated = sensing + dt.timedelta(hours=3)
    return (f"{mission}_MSIL{level}_{sensing:%Y%m%dT%H%M%S}_N{baseline.replace('.', '')}_R132_T{tile}_"
            f"{generated:%Y%m%dT%H%M%S}")


def s2_mtd_xml(*, level: str, name: str, sensing: dt.datetime, baseline: str, image_files: list[str],
               cloud: float = 0.0, offsets: bool | None = None, spacecraft: str = "Sentinel-2B") -> str:
    """MTD_MSIL1C.xml / MTD_MSIL2A.xml with the tags a reader uses (offsets from baseline 04.00)."""
    l2a = level == "2A"
    offsets = float(baseline) >= 4.0 if offsets is None else offsets
    root = "Level-2A_User_Product" if l2a else "Level-1C_User_Product"
    xsd = "User_Product_Level-2A" if l2a else "User_Product_Level-1C"
    images = "".join(f"<IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b[0] + b[1:].lstrip("0") if b != "B8A" else b}">'
        f"<RESOLUTION>{S2_NATIVE_RES[b]}</RESOLUTION></Spectral_Information>"
        for i, b in enumerate(BAND_IDS)
    )
    if l2a:
        quant = ('<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>'
                 '<AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>'
                 '<WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>')
        offs = ("<BOA_ADD_OFFSET_VALUES_LIST>" + "".join(
            f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13)) + "</BOA_ADD_OFFSET_VALUES_LIST>") if offsets else ""
    else:
        quant = '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        offs = ("<Radiometric_Offset_List>" + "".join(
            f'<RADIO_ADD_OFFSET band_id="{i}">-1000</RADIO_ADD_OFFSET>' for i in range(13)) + "</Radiometric_Offset_List>") if offsets else ""
    start = sensing.strftime("%Y-%m-%dT%H:%M:%S.024Z")
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f'<n1:{root} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/{xsd}.xsd" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        "<n1:General_Info>\n<Product_Info>\n"
        f"<PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>\n<PRODUCT_STOP_TIME>{start}</PRODUCT_STOP_TIME>\n"
        f"<PRODUCT_URI>{name}.SAFE</PRODUCT_URI>\n<PROCESSING_LEVEL>Level-{level}</PROCESSING_LEVEL>\n"
        f"<PRODUCT_TYPE>S2MSI{level}</PRODUCT_TYPE>\n<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>\n"
        f"<GENERATION_TIME>{start}</GENERATION_TIME>\n"
        f'<Datatake datatakeIdentifier="GS2B_{sensing:%Y%m%dT%H%M%S}_025505_N{baseline.replace(".", "")}">'
        f"<SPACECRAFT_NAME>{spacecraft}</SPACECRAFT_NAME><DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>"
        f"<DATATAKE_SENSING_START>{start}</DATATAKE_SENSING_START><SENSING_ORBIT_NUMBER>132</SENSING_ORBIT_NUMBER>"
        "<SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION></Datatake>\n"
        "<Product_Organisation><Granule_List><Granule datastripIdentifier=\"DS\" granuleIdentifier=\"G\" "
        f'imageFormat="JPEG2000">{images}</Granule></Granule_List></Product_Organisation>\n'
        "</Product_Info>\n<Product_Image_Characteristics>\n"
        "<Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>\n"
        "<Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>\n"
        f"{quant}\n{offs}\n<Spectral_Information_List>{spectral}</Spectral_Information_List>\n"
        "</Product_Image_Characteristics>\n</n1:General_Info>\n"
        f"<n1:Quality_Indicators_Info><Cloud_Coverage_Assessment>{cloud:.6f}</Cloud_Coverage_Assessment>"
        "</n1:Quality_Indicators_Info>\n"
        f"</n1:{root}>\n"
    )


def write_s2_product(
    root: Path, scenery: Scenery, *, level: str = "2A", baseline: str = "04.00",
    sensing: dt.datetime = dt.datetime(2021, 6, 15, 2, 55, 41), bands: tuple[str, ...] = ("B02", "B03", "B04", "B08"),
    tile: str = "50SNA", size_m: float = 3000.0, cloud_box: tuple[int, int, int, int] | None = None,
    reflectance: np.ndarray | None = None, archive: str | None = None, date: int = 2,
) -> WrittenProduct:
    """A Sentinel-2 SAFE (L1C or L2A) over the scenery, JP2 bands at their native resolutions.

    DN = reflectance × 10000 − offset (offset −1000 from baseline 04.00); ``cloud_box`` (row0, col0,
    rows, cols in 10 m px) is a bright cloud flagged SCL 9 in L2A; ``reflectance`` (4, H, W) at 10 m
    replaces the ground (for radiometry checks).
    """
    name = s2_name(level, sensing, baseline, tile)
    safe = Path(root) / f"{name}.SAFE"
    granule_id = f"L{level}_T{tile}_A025505_{sensing:%Y%m%dT%H%M%S}"
    img = safe / "GRANULE" / granule_id / "IMG_DATA"
    x0 = math.floor((scenery.origin[0] - 100) / 60) * 60
    y1 = math.ceil((scenery.origin[1] + 100) / 60) * 60
    pixels10 = int(math.ceil(size_m / 60)) * 6
    offset = 1000.0 if float(baseline) >= 4.0 else 0.0
    stamp = f"T{tile}_{sensing:%Y%m%dT%H%M%S}"
    image_files = []
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)

    def ground(res: int, band: str) -> np.ndarray:
        n = pixels10 * 10 // res
        if reflectance is not None:
            factor = res // 10
            refl = reflectance[_S2_BAND_OF_GROUND[band] if band in _S2_BAND_OF_GROUND else 0]
            return refl.reshape(n, factor, n, factor).mean(axis=(1, 3)) if factor > 1 else refl
        xs = x0 + (np.arange(n) + 0.5) * res
        ys = y1 - (np.arange(n) + 0.5) * res
        gx, gy = np.meshgrid(xs, ys)
        lon, lat = to_lonlat.transform(gx, gy)
        values = scenery.sample(lon, lat, date=date)[_S2_BAND_OF_GROUND[band]]
        return np.nan_to_num(values, nan=0.05) * (1.0 + 0.02 * (band in ("B05", "B06", "B07", "B8A")))

    def write(res: int, band: str, data: np.ndarray) -> None:
        folder = img / f"R{res}m" if level == "2A" else img
        folder.mkdir(parents=True, exist_ok=True)
        file = f"{stamp}_{band}_{res}m" if level == "2A" else f"{stamp}_{band}"
        with rasterio.open(
            folder / f"{file}.jp2", "w", driver="JP2OpenJPEG", width=data.shape[1], height=data.shape[0], count=1,
            dtype="uint16", crs=UTM, transform=Affine(res, 0, x0, 0, -res, y1), QUALITY=100, REVERSIBLE="YES",
        ) as dst:
            dst.write(data[None])
        image_files.append(str((folder / file).relative_to(safe)))

    for band in bands:
        res = S2_NATIVE_RES[band]
        refl = ground(res, band)
        dn = np.rint(refl * 10000 + offset).astype(np.float64)
        if cloud_box is not None:
            r0, c0, h, w = (v * 10 // res for v in cloud_box)
            dn[r0 : r0 + h, c0 : c0 + w] = 6500 + offset
        write(res, band, np.clip(dn, 1, 65534).astype(np.uint16))
    if level == "2A":
        scl = np.where(ground(20, "B08") > 0.2, 4, 5).astype(np.uint16)
        if cloud_box is not None:
            r0, c0, h, w = (v // 2 for v in cloud_box)
            scl[r0 : r0 + h, c0 : c0 + w] = 9
        write(20, "SCL", scl)
    (safe / f"MTD_MSIL{level}.xml").write_text(s2_mtd_xml(
        level=level, name=name, sensing=sensing, baseline=baseline, image_files=image_files,
        cloud=0.0 if cloud_box is None else 3.2,
    ))
    (safe / "GRANULE" / granule_id / f"MTD_TL.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-' + level + '_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-' + level + '_Tile_Metadata.xsd">'
        f"<n1:General_Info><TILE_ID>{granule_id}</TILE_ID><SENSING_TIME>{sensing:%Y-%m-%dT%H:%M:%S}.024Z</SENSING_TIME></n1:General_Info>"
        "<n1:Geometric_Info><Tile_Geocoding><HORIZONTAL_CS_NAME>WGS84 / UTM zone 50N</HORIZONTAL_CS_NAME>"
        "<HORIZONTAL_CS_CODE>EPSG:32650</HORIZONTAL_CS_CODE></Tile_Geocoding></n1:Geometric_Info></n1:Level-" + level + "_Tile_ID>\n"
    )
    (safe / "manifest.safe").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_l2a_user_product"/>\n')
    path = _archive(safe, archive)
    return WrittenProduct(path, name, None, 0.0, sensing)


# --------------------------------------------------------------------------------------------------
# Archives


def _archive(folder: Path, kind: str | None) -> Path:
    """Pack ``folder`` as delivered (``zip`` or ``tar.gz``, the folder as top-level entry) and remove it."""
    if kind is None:
        return folder
    if kind == "zip":
        target = folder.with_name(folder.name + ".zip")
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(folder.rglob("*")):
                zf.write(file, str(file.relative_to(folder.parent)))
    elif kind == "tar.gz":
        target = folder.with_name(folder.name + ".tar.gz")
        with tarfile.open(target, "w:gz") as tf:
            tf.add(folder, arcname=folder.name)
    else:
        raise ValueError(f"unknown archive kind {kind!r}")
    shutil.rmtree(folder)
    return target


def write_hostile_zip(path: Path, kind: str) -> Path:
    """A zip that must be refused: ``dotdot`` (../ member), ``absolute``, ``symlink``, ``bomb`` (large)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("S2B_MSIL2A_X.SAFE/MTD_MSIL2A.xml", "<x/>")
        if kind == "dotdot":
            zf.writestr("../../escaped.txt", "outside")
        elif kind == "absolute":
            zf.writestr("/tmp/escaped.txt", "outside")
        elif kind == "symlink":
            info = zipfile.ZipInfo("S2B_MSIL2A_X.SAFE/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        elif kind == "bomb":
            zf.writestr("S2B_MSIL2A_X.SAFE/zeros.bin", b"\0" * (8 << 20))
        else:
            raise ValueError(kind)
    return path


def write_hostile_tar(path: Path, kind: str) -> Path:
    """A tar.gz that must be refused: ``dotdot`` or ``symlink`` members."""
    import io

    with tarfile.open(path, "w:gz") as tf:
        data = b"outside"
        info = tarfile.TarInfo("../escaped.txt" if kind == "dotdot" else "GF2_PMS1_X/link")
        if kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tf.addfile(info)
        else:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def utm_bounds_of(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as src:
        return tuple(src.bounds)


__all__ = [
    "Scenery", "WrittenProduct", "sensor_model_rpc", "write_gf2_product", "write_gf3_product",
    "write_s2_product", "s2_mtd_xml", "gf2_xml", "gf3_meta_xml", "write_hostile_zip", "write_hostile_tar",
    "TERRAIN_HEIGHT",
]
