"""The review loop on the demo: review → export → prepare → train → detect, metrics before and after.

Needs a `make demo` output (``demo-out/``). A simulated reviewer works through the real HTTP API of
`changeflow review` (a server in a subprocess, the per-launch token read from the page config): it
accepts every candidate that overlaps the synthetic truth and rejects the rest. Two exports are taken
from the same session:

- ``candidates``: only the candidates are labelled (1 accepted, 0 rejected, 255 everywhere else);
- ``cells``: the reviewer then also marks every review cell reviewed, so what is not an accepted
  candidate is no change (the changes detection missed become wrong 0 labels: the reviewer did not draw
  them);
- ``drawn``: the reviewer then also draws each truth change that no accepted candidate touches (its
  outline, as a careful person would draw it), posted as new features.

Each export becomes the group's label (role ``label`` in a copy of the demo's scene list) and goes
through `changeflow run` with the demo's prepare / train / detect settings. Every model, the demo's
included, is scored on the whole group against the synthetic truth (the demo's label).

    .venv/bin/python benchmarks/review_loop.py [--demo demo-out] [--work demo-out/review-loop]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import rasterio
import shapely
import yaml
from rasterio.features import geometry_mask, shapes
from rasterio.windows import from_bounds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.detect.evaluate import evaluate_prediction  # noqa: E402

CHANGEFLOW = [sys.executable, "-m", "flows.cli"]


def free_port() -> int:
    """An unused local TCP port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(prepared: Path, detections: Path, review_dir: Path, port: int) -> subprocess.Popen:
    """`changeflow review` in a subprocess, once it answers."""
    server = subprocess.Popen([*CHANGEFLOW, "review", "--prepared", str(prepared), "--detections", str(detections),
                               "--review-dir", str(review_dir), "--port", str(port), "--reviewer", "loop"], cwd=ROOT)
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=2)
            return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the review server did not start")


def overlaps_truth(geometry: shapely.Geometry, truth: rasterio.io.DatasetReader) -> bool:
    """Whether any truth change pixel lies inside the polygon."""
    window = from_bounds(*geometry.bounds, transform=truth.transform).round_offsets().round_lengths()
    labels = truth.read(1, window=window, boundless=True, fill_value=0)
    inside = ~geometry_mask([geometry], out_shape=labels.shape, transform=truth.window_transform(window))
    return bool((labels[inside] == 1).any())


def review(url: str, truth_path: Path) -> dict[str, int]:
    """Accept the candidates overlapping the truth, reject the rest, through the API; counts per decision."""
    token = httpx.get(f"{url}/api/config").json()["token"]
    features = {f["id"]: f for f in httpx.get(f"{url}/api/features").json()["features"]}
    decided = {"accepted": 0, "rejected": 0}
    with rasterio.open(truth_path) as truth:
        for uuid in httpx.get(f"{url}/api/queue").json():
            feature = features[uuid]
            status = "accepted" if overlaps_truth(shapely.geometry.shape(feature["geometry"]), truth) else "rejected"
            answer = httpx.patch(f"{url}/api/features/{uuid}", headers={"X-Review-Token": token},
                                 json={"version": feature["properties"]["version"], "status": status})
            answer.raise_for_status()
            decided[status] += 1
    return decided


def mark_all_cells(url: str) -> int:
    """Mark every review cell reviewed; their count."""
    token = httpx.get(f"{url}/api/config").json()["token"]
    cells = httpx.get(f"{url}/api/cells").json()
    for row in range(cells["rows"]):
        for col in range(cells["cols"]):
            httpx.put(f"{url}/api/cells/{row}/{col}", headers={"X-Review-Token": token},
                      json={"reviewed": True}).raise_for_status()
    return cells["rows"] * cells["cols"]


def draw_missed(url: str, truth_path: Path) -> int:
    """Post the outline of every truth change region no accepted candidate touches; how many were drawn."""
    token = httpx.get(f"{url}/api/config").json()["token"]
    accepted = [shapely.geometry.shape(f["geometry"]) for f in httpx.get(f"{url}/api/features").json()["features"]
                if f["properties"]["status"] == "accepted"]
    tree = shapely.STRtree(accepted)
    with rasterio.open(truth_path) as truth:
        change = (truth.read(1) == 1).astype("uint8")
        regions = [shapely.geometry.shape(g) for g, _ in shapes(change, mask=change == 1, transform=truth.transform)]
    drawn = 0
    for region in regions:
        if len(tree.query(region, predicate="intersects")):
            continue
        httpx.post(f"{url}/api/features", headers={"X-Review-Token": token},
                   json={"geometry": shapely.geometry.mapping(region)}).raise_for_status()
        drawn += 1
    return drawn


def export(prepared: Path, detections: Path, review_dir: Path, out: Path) -> dict:
    """`changeflow review export`; its printed counts."""
    result = subprocess.run([*CHANGEFLOW, "review", "export", "--prepared", str(prepared), "--detections",
                             str(detections), "--review-dir", str(review_dir), "--out", str(out)],
                            cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def label_quality(label: Path, truth: Path) -> dict[str, float]:
    """How the exported label agrees with the truth on the pixels it labels."""
    with rasterio.open(label) as a, rasterio.open(truth) as b:
        ours, real = a.read(1), b.read(1)
    labelled, known = ours != 255, real != 255  # the truth's own ignore pixels are left out of the agreement
    change, no_change = (ours == 1) & known, (ours == 0) & known
    return {
        "labelled_fraction": float(labelled.mean()),
        "change_px": int((ours == 1).sum()), "no_change_px": int((ours == 0).sum()),
        "change_correct": float((real[change] == 1).mean()) if change.any() else float("nan"),
        "no_change_correct": float((real[no_change] == 0).mean()) if no_change.any() else float("nan"),
        "truth_change_labelled_1": float((ours[real == 1] == 1).mean()),
    }


def run_with_label(demo: Path, label: Path, work: Path) -> tuple[Path, float]:
    """`changeflow run` on the demo's scenes with ``label`` as the label; (its detect folder, seconds)."""
    scenes_yaml = demo / "scenes" / "demo_scenes.yaml"
    scenes = yaml.safe_load(scenes_yaml.read_text())
    for scene in scenes["scenes"]:
        scene["path"] = str(label.resolve() if scene["role"] == "label" else (scenes_yaml.parent / scene["path"]).resolve())
        scene["date"] = str(scene["date"])
    work.mkdir(parents=True, exist_ok=True)
    (work / "scenes.yaml").write_text(yaml.safe_dump(scenes))
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["prepare"]["scene_list"] = str((work / "scenes.yaml").resolve())
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    subprocess.run([*CHANGEFLOW, "run", "--config", str(work / "run.yaml"), "--out", str(work / "run")], cwd=ROOT,
                   check=True)
    return work / "run" / "detect", time.perf_counter() - started


def scores(detect: Path, truth: Path) -> dict[str, float]:
    """Pixel and object metrics of a detection against the truth, on the whole group."""
    metrics = evaluate_prediction(detect / "demo" / "change_class.tif", truth, polygons=detect / "demo" / "changes.gpkg")
    pixel, objects = metrics["pixel"], metrics["object"]
    return {"f1": pixel["f1"], "iou": pixel["iou"], "kappa": pixel["kappa"], "precision": pixel["precision"],
            "recall": pixel["recall"], "object_f1": objects["f1"]}


def main() -> None:
    """Run the loop and print / write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "demo-out")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    demo, work = args.demo.resolve(), (args.work or args.demo / "review-loop").resolve()
    prepared, detections = demo / "run" / "prepared", demo / "run" / "detect"
    truth = prepared / "groups" / "demo" / "grid" / "label.tif"
    port = free_port()
    server = start_server(prepared, detections, work / "review", port)
    results: dict = {"before": scores(detections, truth)}
    try:
        results["decisions"] = review(f"http://127.0.0.1:{port}", truth)
        results["exports"] = {"candidates": export(prepared, detections, work / "review", work / "candidates")}
        results["cells"] = mark_all_cells(f"http://127.0.0.1:{port}")
        results["exports"]["cells"] = export(prepared, detections, work / "review", work / "cells")
        results["drawn"] = draw_missed(f"http://127.0.0.1:{port}", truth)
        results["exports"]["drawn"] = export(prepared, detections, work / "review", work / "drawn")
    finally:
        os.kill(server.pid, signal.SIGINT)
        server.wait(timeout=30)
    for variant in ("candidates", "cells", "drawn"):
        label = work / variant / "review_label.tif"
        results[f"label_{variant}"] = label_quality(label, truth)
        detect, seconds = run_with_label(demo, label, work / f"run-{variant}")
        results[f"after_{variant}"] = {**scores(detect, truth), "run_seconds": seconds}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
