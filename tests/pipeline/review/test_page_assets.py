"""The page's assets: vendored OpenLayers matches its recorded SHA-256, with licence and version; no CDN."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
STATIC = resources.files("pipeline.review") / "static"


def test_vendored_openlayers_matches_its_recorded_checksums():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "vendor_openlayers.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    vendor = STATIC / "vendor" / "ol"
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", (vendor / "VERSION").read_text())
    assert "BSD 2-Clause" in (vendor / "LICENSE.md").read_text()
    assert f"ol-{(vendor / 'VERSION').read_text().strip()}.tgz" in (vendor / "SHA256").read_text()


def test_page_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/static/") for source in sources)
    for source in sources:
        assert client.get(source).status_code == 200
    script = (STATIC / "review.js").read_text()
    assert not re.search(r"https?://", script)
    config = client.get("/api/config").json()
    assert config["resolutions"] == [16.0, 8.0, 4.0] and config["origin"] == [500000.0, 3500000.0]
    assert set(config["keys"]) >= {"a", "r", "n", "p", "d", "e", "g", "z (Ctrl+Z)", "c"}
