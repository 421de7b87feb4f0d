"""Vendor OpenLayers' standalone build (``dist/ol.js``, ``ol/ol.css``) into the review app's package data.

The files come from OpenLayers' npm package (the registry tarball, the same file ``npm pack ol@VERSION``
fetches), with its licence and version, into ``pipeline/review/static/vendor/ol/``. The SHA-256 of the
tarball is recorded in ``SHA256`` there and checked on every refresh; ``--check`` checks the vendored
files against the sums recorded (no network). A new version is taken with ``--version V --record``, which
first checks the tarball against the registry's own sha512 integrity, then records the new sums.

    .venv/bin/python scripts/vendor_openlayers.py            # refresh the recorded version, tarball checked
    .venv/bin/python scripts/vendor_openlayers.py --check    # vendored files unchanged since recorded
    .venv/bin/python scripts/vendor_openlayers.py --version 10.11.0 --record
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "pipeline" / "review" / "static" / "vendor" / "ol"
REGISTRY = "https://registry.npmjs.org/ol"
FILES = {"package/dist/ol.js": "ol.js", "package/ol.css": "ol.css", "package/LICENSE.md": "LICENSE.md"}
SUMS = "SHA256"  # lines "<sha256>  <name>": the tarball (ol-VERSION.tgz) and each vendored file


def sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def recorded() -> dict[str, str]:
    """The sums recorded in the vendor folder, name -> hex SHA-256 (empty when none)."""
    path = VENDOR / SUMS
    if not path.exists():
        return {}
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in path.read_text().splitlines() if line)}


def fetch(url: str) -> bytes:
    """The body of a registry URL."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def tarball(version: str, record: bool) -> bytes:
    """The npm tarball of ``version``, checked against the recorded SHA-256 (or, with ``record``, npm's sha512)."""
    data = fetch(f"{REGISTRY}/-/ol-{version}.tgz")
    name = f"ol-{version}.tgz"
    if record:
        integrity = json.loads(fetch(f"{REGISTRY}/{version}"))["dist"]["integrity"]
        algorithm, digest = integrity.split("-", 1)
        if algorithm != "sha512" or base64.b64decode(digest) != hashlib.sha512(data).digest():
            sys.exit(f"error: {name} does not match the registry's integrity {integrity}")
    elif recorded().get(name) != sha256(data):
        sys.exit(f"error: {name} has SHA-256 {sha256(data)}, not the recorded {recorded().get(name)} "
                 f"({VENDOR / SUMS}); use --record only after checking why")
    return data


def vendor(version: str, record: bool) -> None:
    """Write the vendored files (and with ``record`` their sums) from the tarball of ``version``."""
    data = tarball(version, record)
    sums = {f"ol-{version}.tgz": sha256(data)}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member, name in FILES.items():
            content = archive.extractfile(member).read()
            sums[name] = sha256(content)
            (VENDOR / name).parent.mkdir(parents=True, exist_ok=True)
            (VENDOR / name).write_bytes(content)
    (VENDOR / "VERSION").write_text(f"{version}\n")
    expected = recorded()
    if record:
        (VENDOR / SUMS).write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    elif any(expected.get(name) != digest for name, digest in sums.items()):
        sys.exit(f"error: the files of ol {version} differ from the sums in {VENDOR / SUMS}")
    print(f"vendored OpenLayers {version} into {VENDOR}")


def check() -> int:
    """Exit status 0 when every vendored file matches its recorded SHA-256, else 1 (naming the file)."""
    sums = recorded()
    bad = [name for name in FILES.values() if not (VENDOR / name).exists() or sha256((VENDOR / name).read_bytes()) != sums.get(name)]
    for name in bad:
        print(f"error: {VENDOR / name} is missing or differs from its recorded SHA-256", file=sys.stderr)
    if not bad:
        print(f"OpenLayers {(VENDOR / 'VERSION').read_text().strip()}: vendored files match {VENDOR / SUMS}")
    return 1 if bad else 0


def main() -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="the ol version (default: the one vendored now)")
    parser.add_argument("--record", action="store_true", help="record the sums of a new version (checked against npm)")
    parser.add_argument("--check", action="store_true", help="only check the vendored files (no network)")
    args = parser.parse_args()
    if args.check:
        return check()
    version = args.version or (VENDOR / "VERSION").read_text().strip()
    vendor(version, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
