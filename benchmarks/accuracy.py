"""Accuracy on real labelled scenes, through the `changeflow` CLI as a user runs it.

For each real labelled scene of ../shared/data (see its README.md):

- **label-free**: the whole scene is prepared as one group (`changeflow prepare`), then every applicable
  label-free method runs on it (`changeflow detect` with `method:`); OA, kappa and F1 come from the
  detection report (`report.json`, pixel metrics; Taizhou: its labelled pixels only, the rest is label
  255 = ignored);
- **trained**: the scene is cut into a left and a right half with a 16 px guard gap between them
  (columns [0, W/2 − 8) and [W/2 + 8, W)). Fold "L→R": the left half is prepared (tiles split into
  train / val only), FC-Siam-diff is trained on it for a fixed budget of optimiser steps, and
  `changeflow detect` runs the best checkpoint (by val IoU, val being part of the training half) over
  the whole right half, prepared as a group of its own; fold "R→L" the other way round. The test half is
  never seen by training or model selection. The row reports the metrics of both test halves pooled
  (confusion counts summed) and each fold's F1. The budget is `train.max_steps`; `--change-share` sets
  `train.sampling.change_share` (class-balanced crops). Each fold also runs the scene kind's pseudo-label
  method (optical: IR-MAD, SAR: log-ratio, heterogeneous: NPSG; fixed by kind, not chosen on labels) with
  `changeflow detect` on the test half, so trained and label-free are compared on the same pixels.
- **trained from pseudo-labels** (`fc_siam_diff_pseudo`): the same, but `train.pseudo_labels:
  {method: <the kind's method>, keep_labels: false}`: the training half's labels are not used at all —
  train and val labels are the confident pixels of the label-free map of the training half.

Conversions done here (the rest is read by `changeflow prepare` as shipped):

- Han #2: the colour-coded reference (blue = change) becomes a 0/255 mask with the data README's rule
  B − R > 80;
- Taizhou: change.bmp (255 = changed sample) and unchanged.bmp (255 = unchanged sample) become one
  0/1/255 label GeoTIFF on the images' grid (UTM 51N, 30 m), 255 = unlabelled;
- the halves of the trained protocol are written as GeoTIFFs (georeferenced with their window's
  transform for Taizhou, pixel space otherwise); image bands and label values are copied unchanged.

Settings applied to every scene (all are `changeflow prepare` keys): `georeferenced: false` except for
Taizhou; `coregistration: {enabled: false}` because every pair is distributed co-registered (`--coregister`
turns it on); `tiling.black_value: -1` because these 8-bit images have no nodata and values 0–5 are
real dark pixels (water in Italy's NIR band, low SAR backscatter), which the default rule (5) masks
(`--black-value 5` for the default); Beijing's JPEG labels: `label_encoding: binary255` (> 127 = change).

    python benchmarks/accuracy.py                              # everything (long: see benchmarks/README.md)
    python benchmarks/accuracy.py --scenes italy yellow_a --methods npsg log_ratio
    python benchmarks/accuracy.py --methods fc_siam_diff --scenes taizhou --steps 200

Results are merged into the `--json` file by (scene, method), so subsets can be rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GAP = 16
LABEL_FREE = ("cva", "irmad", "log_ratio", "mean_ratio", "npsg")
TRAINED = ("fc_siam_diff", "fc_siam_diff_pseudo")
PSEUDO_METHOD = {"optical": "irmad", "sar": "log_ratio", "heterogeneous": "npsg"}
KIND_METHODS = {"optical": ("cva", "irmad", "npsg"), "sar": ("log_ratio", "mean_ratio", "npsg"),
                "heterogeneous": ("npsg",)}


@dataclass(frozen=True)
class Pair:
    """One group: t1 (role A), t2 (role B) and a label, as paths relative to the data folder.

    A path may name a MATLAB array as ``file.mat:key``; ``label`` may be a conversion's name
    (``@han`` / ``@taizhou``) that the script writes first.
    """

    group: str
    t1: str
    t2: str
    label: str


@dataclass(frozen=True)
class Scene:
    name: str
    kind: str  # optical | sar | heterogeneous: decides the label-free methods
    pairs: tuple[Pair, ...]
    modalities: tuple[str, str]  # training normalisation of A and B: optical | sar
    georeferenced: bool = False
    label_encoding: str = "auto"
    trainable: bool = True
    sar_roles: tuple[str, ...] = ()
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        return KIND_METHODS[self.kind] + (TRAINED if self.trainable else ())


_LEVIR_CROPS = ("test_102_0512_0000", "test_121_0768_0256", "test_2_0000_0000", "test_2_0000_0512",
                "test_55_0256_0000", "test_77_0512_0256", "test_7_0256_0512", "train_36_0512_0512",
                "train_386_0512_0768", "train_412_0512_0768", "val_27_0000_0256")

SCENES: dict[str, Scene] = {scene.name: scene for scene in (
    Scene("shuguang", "heterogeneous",
          (Pair("shuguang", "hcd-shuguang/shuguang_1.bmp", "hcd-shuguang/shuguang_2.bmp",
                "hcd-shuguang/shuguang_gt.bmp"),), ("sar", "optical"), sar_roles=("A",),
          note="Radarsat-2 SAR (3 identical BMP channels) → Google Earth RGB, 921×593"),
    Scene("italy", "heterogeneous",
          (Pair("italy", "hcd-italy/Italy_1.bmp", "hcd-italy/Italy_2.bmp", "hcd-italy/Italy_gt.bmp"),),
          ("optical", "optical"), note="Landsat-5 NIR → Google Earth RGB, 412×300"),
    Scene("img17", "heterogeneous",
          (Pair("img17", "hcd-img17/#4-Img17.mat:image_t1", "hcd-img17/#4-Img17.mat:image_t2",
                "hcd-img17/#4-Img17.mat:Ref_gt"),), ("optical", "optical"),
          note="multispectral false colour → grey, flood (MATLAB arrays)"),
    Scene("han2", "heterogeneous",
          (Pair("han2", "hcd-han-mcd/Dataset#2/lidar01.tif", "hcd-han-mcd/Dataset#2/optmul01.tif", "@han"),),
          ("optical", "optical"), note="LiDAR → optical RGB, 400×400, colour-coded label converted"),
    Scene("yellow_a", "sar",
          (Pair("yellow_a", "sar-yellowriver-abcd/yellow_A_1.bmp", "sar-yellowriver-abcd/yellow_A_2.bmp",
                "sar-yellowriver-abcd/yellow_A_gt.bmp"),), ("sar", "sar"), sar_roles=("A", "B"),
          note="Radarsat-2 SAR/SAR, 257×289"),
    Scene("yellow_b", "sar",
          (Pair("yellow_b", "sar-yellowriver-abcd/yellow_B_1.bmp", "sar-yellowriver-abcd/yellow_B_2.bmp",
                "sar-yellowriver-abcd/yellow_B_gt.bmp"),), ("sar", "sar"), sar_roles=("A", "B"),
          note="Radarsat-2 SAR/SAR, 450×280"),
    Scene("beijing_a", "optical",
          (Pair("beijing_a", "opt-beijing/beijing_A_1.jpg", "opt-beijing/beijing_A_2.jpg",
                "opt-beijing/beijing_A_gt.jpg"),), ("optical", "optical"), label_encoding="binary255",
          note="VHR RGB JPEG, 500×500, JPEG label > 127"),
    Scene("beijing_b", "optical",
          (Pair("beijing_b", "opt-beijing/beijing_B_1.jpg", "opt-beijing/beijing_B_2.jpg",
                "opt-beijing/beijing_B_gt.jpg"),), ("optical", "optical"), label_encoding="binary255",
          note="VHR RGB JPEG, 500×500, JPEG label > 127"),
    Scene("levir_tile", "optical",
          (Pair("levir_test_101", "levir-cd-samples/full_tile/A/test_101.png",
                "levir-cd-samples/full_tile/B/test_101.png", "levir-cd-samples/full_tile/label/test_101.png"),),
          ("optical", "optical"), note="LEVIR-CD test_101, 1024², 0.5 m RGB"),
    Scene("levir_crops", "optical",
          tuple(Pair(f"levir_{name}", f"levir-cd-samples/bit_cd_samples/A/{name}.png",
                     f"levir-cd-samples/bit_cd_samples/B/{name}.png",
                     f"levir-cd-samples/bit_cd_samples/label/{name}.png") for name in _LEVIR_CROPS),
          ("optical", "optical"), trainable=False,
          note="the 11 BIT_CD 256² crops as 11 pixel-space groups of ONE prepare run; pooled counts"),
    Scene("taizhou", "optical",
          (Pair("taizhou", "landsat-taizhou-nanjing/Taizhou/2000TM", "landsat-taizhou-nanjing/Taizhou/2003TM",
                "@taizhou"),), ("optical", "optical"), georeferenced=True,
          note="Landsat 6 bands, UTM 51N 30 m, 400×400; sparse labels (2.6 % change, 10.7 % no-change)"),
)}


# ---------------------------------------------------------------- reading, conversions, halves


def _source(data: Path, relative: str) -> tuple[Path, str | None]:
    if ".mat:" in relative:
        path, key = relative.rsplit(":", 1)
        return data / path, key
    return data / relative, None


def read_array(data: Path, relative: str) -> tuple[np.ndarray, dict]:
    """(bands, H, W) array and {crs, transform} (None in pixel space) of a data file."""
    path, key = _source(data, relative)
    if key is not None:
        from scipy.io import loadmat

        array = np.asarray(loadmat(path)[key])
        array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        return array, {"crs": None, "transform": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            return dataset.read(), {"crs": dataset.crs, "transform": dataset.transform if dataset.crs else None}


def write_tif(path: Path, array: np.ndarray, geo: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": array.shape[-1], "height": array.shape[-2], "count": array.shape[0],
               "dtype": array.dtype}
    if geo.get("crs") is not None:
        profile.update(crs=geo["crs"], transform=geo["transform"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    return path


def converted_label(data: Path, scene: Scene, pair: Pair, inputs: Path) -> Path:
    """The label file prepare reads: the shipped one, or this script's conversion (documented above)."""
    if pair.label == "@han":
        colour, geo = read_array(data, "hcd-han-mcd/Dataset#2/optmul01_Refcolor.tif")
        change = colour[2].astype(np.int16) - colour[0].astype(np.int16) > 80
        return write_tif(inputs / scene.name / "label_han.tif", (change * 255).astype(np.uint8)[None], geo)
    if pair.label == "@taizhou":
        folder = "landsat-taizhou-nanjing/Taizhou"
        _, geo = read_array(data, f"{folder}/2000TM")
        changed = read_array(data, f"{folder}/change.bmp")[0][0] > 127
        unchanged = read_array(data, f"{folder}/unchanged.bmp")[0][0] > 127
        label = np.full(changed.shape, 255, np.uint8)
        label[unchanged] = 0
        label[changed] = 1
        return write_tif(inputs / scene.name / "label_taizhou.tif", label[None], geo)
    return data / pair.label  # a MATLAB array stays 'file.mat:key', which prepare reads


def label_array(data: Path, scene: Scene, pair: Pair, inputs: Path) -> tuple[np.ndarray, dict]:
    if pair.label.startswith("@"):
        return read_array(inputs, str(converted_label(data, scene, pair, inputs).relative_to(inputs)))
    array, geo = read_array(data, pair.label)
    return array[:1], geo


def write_halves(data: Path, scene: Scene, inputs: Path) -> dict[str, dict[str, Path]]:
    """Left and right halves (16 px guard gap between them) of A, B and the label, as GeoTIFFs."""
    pair = scene.pairs[0]
    t1, geo = read_array(data, pair.t1)
    t2, _ = read_array(data, pair.t2)
    label, _ = label_array(data, scene, pair, inputs)
    width = t1.shape[-1]
    middle = width // 2
    spans = {"left": (0, middle - GAP // 2), "right": (middle + GAP // 2, width)}
    halves = {}
    for side, (x0, x1) in spans.items():
        half_geo = dict(geo)
        if geo["crs"] is not None:
            half_geo["transform"] = rasterio.windows.transform(Window(x0, 0, x1 - x0, t1.shape[1]), geo["transform"])
        folder = inputs / scene.name / side
        halves[side] = {role: write_tif(folder / f"{role}.tif", np.ascontiguousarray(array[:, :, x0:x1]), half_geo)
                        for role, array in (("A", t1), ("B", t2), ("label", label))}
    return halves


# ---------------------------------------------------------------- configs and commands


def prepare_config(scene: Scene, groups: list[tuple[str, dict[str, str]]], args: argparse.Namespace,
                   tile: int, stride: int, split: dict | None = None) -> dict:
    scenes = []
    for group, paths in groups:
        for role in ("A", "B", "label"):
            entry = {"path": str(paths[role]), "role": role, "group": group, "id": f"{group}_{role}"}
            if role in scene.sar_roles:
                entry["sar"] = True
            scenes.append(entry)
    config = {
        "georeferenced": scene.georeferenced,
        "label_encoding": scene.label_encoding,
        "coregistration": {"enabled": bool(args.coregister)},
        "tiling": {"size": tile, "stride": stride, "black_value": args.black_value},
        "scenes": scenes,
    }
    if split:
        config["split"] = split
    return config


class Runner:
    """Runs `changeflow` commands, one at a time, with their CPU seconds and a log per command."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        executable = Path(sys.executable).parent / "changeflow"
        self.command = [str(executable)] if executable.exists() else [sys.executable, "-m", "flows.cli"]
        tmp = workdir / "tmp"  # train/detect take a file lock in $TMPDIR: keep ours apart from other users'
        tmp.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "TMPDIR": str(tmp)}

    def __call__(self, verb: str, config: dict, config_path: Path, out: Path) -> dict:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = out.with_name(out.name + f".{verb}.log")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        with log.open("w") as handle:
            rc = subprocess.run([*self.command, verb, "-c", str(config_path), "-o", str(out)], stdout=handle,
                                stderr=subprocess.STDOUT, env=self.env, cwd=REPO).returncode
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result = {"rc": rc, "cpu_s": round(cpu, 1), "wall_s": round(time.perf_counter() - started, 1),
                  "log": str(log)}
        if rc != 0:
            lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower()]
            result["error"] = (errors or lines or ["(no output)"])[-1][:400]
            print(f"  {verb} failed (exit {rc}): {result['error']}  [{log}]", flush=True)
        return result


def from_counts(tp: float, fp: float, fn: float, tn: float) -> dict:
    """OA, kappa, F1, precision, recall of a confusion matrix (the detection report's definitions)."""
    n = tp + fp + fn + tn
    oa = (tp + tn) / n if n else float("nan")
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n) if n else float("nan")
    kappa = (oa - expected) / (1 - expected) if n and expected != 1 else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"oa": oa, "kappa": kappa, "f1": f1, "precision": precision, "recall": recall,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def report_metrics(detect_out: Path, group: str) -> dict:
    report = json.loads((detect_out / group / "report.json").read_text())
    pixel = report["metrics"]["pixel"]
    return {**{key: pixel[key] for key in ("oa", "kappa", "f1", "precision", "recall", "tp", "fp", "fn", "tn",
                                           "pred_nodata")},
            "method_s": round(report.get("timings", {}).get("detect", float("nan")), 2)}


# ---------------------------------------------------------------- the two protocols


def run_label_free(scene: Scene, methods: list[str], args: argparse.Namespace, run: Runner) -> list[dict]:
    root = args.workdir / scene.name / "whole"
    groups = [(pair.group, {"A": args.data / pair.t1, "B": args.data / pair.t2,
                            "label": converted_label(args.data, scene, pair, args.workdir / "inputs")})
              for pair in scene.pairs]
    prepared = root / "prepared"
    prep = run("prepare", prepare_config(scene, groups, args, 256, 256), root / "prepare.yaml", prepared)
    rows = []
    for method in methods:
        row = {"scene": scene.name, "method": method, "protocol": "whole scene, label-free",
               "prepare_cpu_s": prep["cpu_s"]}
        if prep["rc"] != 0:
            rows.append({**row, "error": f"prepare: {prep['error']}"})
            continue
        out = root / f"detect_{method}"
        det = run("detect", {"prepared": str(prepared), "method": method, "device": "cpu"},
                  root / f"detect_{method}.yaml", out)
        row["cpu_s"] = det["cpu_s"]
        row["wall_s"] = det["wall_s"]
        found = [(pair.group, out / pair.group / "report.json") for pair in scene.pairs]
        missing = [group for group, path in found if not path.exists()]
        if det["rc"] != 0 and len(missing) == len(found):
            rows.append({**row, "error": f"detect: {det['error']}"})
            continue
        per_group = {group: report_metrics(out, group) for group, path in found if path.exists()}
        counts = [sum(m[key] for m in per_group.values()) for key in ("tp", "fp", "fn", "tn")]
        row.update(from_counts(*counts))
        row["method_s"] = round(sum(m["method_s"] for m in per_group.values()), 2)
        if len(scene.pairs) > 1:
            row["groups"] = per_group
            row["groups_missing"] = missing
            if det["rc"] != 0:
                row["error"] = f"detect (some groups): {det['error']}"
        rows.append(row)
        print(f"  {scene.name:12s} {method:12s} OA {row['oa']:.3f}  kappa {row['kappa']:.3f}  F1 {row['f1']:.3f}"
              f"  CPU {row['cpu_s']:.0f} s (method {row['method_s']:.1f} s)", flush=True)
    return rows


def train_config(scene: Scene, method: str, prepared: Path, args: argparse.Namespace) -> dict:
    """`changeflow train` settings of a fold: FC-Siam-diff, the step budget, optionally pseudo-labels."""
    a, b = scene.modalities
    config = {"data": str(prepared), "model": "fc_siam_diff", "inputs": ["A", "B"],
              "modalities": {"A": a, "B": b, "C": "optical"}, "max_steps": args.steps, "batch_size": args.batch,
              "lr": args.lr, "seed": args.seed, "workers": 0, "device": "cpu"}
    if args.change_share:
        config["sampling"] = {"change_share": args.change_share}
    if method.endswith("_pseudo"):
        config["pseudo_labels"] = {"method": PSEUDO_METHOD[scene.kind], "keep_labels": False}
    return config


def run_fold(scene: Scene, method: str, fold: str, halves: dict, args: argparse.Namespace, run: Runner) -> dict:
    train_side, test_side = ("left", "right") if fold == "L→R" else ("right", "left")
    root = args.workdir / scene.name / f"{method}_{train_side}_to_{test_side}"
    group = scene.pairs[0].group
    result: dict = {"fold": fold, "train_half": train_side, "test_half": test_side}
    train_prep = root / "prepared_train"
    split = {"train": 0.8, "val": 0.2, "test": 0.0}
    prep = run("prepare", prepare_config(scene, [(f"{group}_{train_side}", halves[train_side])], args,
                                         args.tile, args.tile // 2, split), root / "prepare_train.yaml", train_prep)
    test_prep = root / "prepared_test"
    prep_test = run("prepare", prepare_config(scene, [(f"{group}_{test_side}", halves[test_side])], args,
                                              args.tile, args.tile), root / "prepare_test.yaml", test_prep)
    result["prepare_cpu_s"] = round(prep["cpu_s"] + prep_test["cpu_s"], 1)
    for name, step in (("prepare train half", prep), ("prepare test half", prep_test)):
        if step["rc"] != 0:
            return {**result, "error": f"{name}: {step['error']}"}
    splits = json.loads((train_prep / "prepare_report.json").read_text())["splits"]
    result.update(train_tiles=splits["train"]["tiles"], val_tiles=splits["val"]["tiles"])
    model_dir = root / "model"
    trained = run("train", train_config(scene, method, train_prep, args), root / "train.yaml", model_dir)
    result["train_cpu_s"], result["train_wall_s"] = trained["cpu_s"], trained["wall_s"]
    if trained["rc"] != 0:
        return {**result, "error": f"train: {trained['error']}"}
    metrics = json.loads((model_dir / "metrics.json").read_text())
    result.update(steps=metrics["steps"], epochs=metrics["epochs_run"], best_epoch=metrics["best_epoch"],
                  stopped=metrics["stopped"])
    out = root / "detect"
    det = run("detect", {"prepared": str(test_prep), "checkpoint": str(model_dir / "best.pt"), "device": "cpu",
                         "batch_size": 16}, root / "detect.yaml", out)
    result["detect_cpu_s"] = det["cpu_s"]
    if det["rc"] != 0:
        return {**result, "error": f"detect: {det['error']}"}
    result.update(report_metrics(out, f"{group}_{test_side}"))
    result["label_free"] = label_free_on_half(scene, test_prep, f"{group}_{test_side}", root, run)
    return result


def label_free_on_half(scene: Scene, prepared: Path, group: str, root: Path, run: Runner) -> dict:
    """The kind's pseudo-label method on the prepared test half: the label-free figure on the same pixels."""
    method = PSEUDO_METHOD[scene.kind]
    out = root / f"detect_{method}"
    det = run("detect", {"prepared": str(prepared), "method": method, "device": "cpu"}, root / f"detect_{method}.yaml",
              out)
    if det["rc"] != 0:
        return {"method": method, "error": det["error"]}
    return {"method": method, **report_metrics(out, group)}


def run_trained(scene: Scene, method: str, args: argparse.Namespace, run: Runner) -> dict:
    halves = write_halves(args.data, scene, args.workdir / "inputs")
    folds = []
    for fold in ("L→R", "R→L"):
        started = time.perf_counter()
        folds.append(run_fold(scene, method, fold, halves, args, run))
        done = folds[-1]
        text = (f"F1 {done['f1']:.3f} kappa {done['kappa']:.3f}" if "f1" in done else f"error: {done['error']}")
        print(f"  {scene.name:12s} {method} fold {fold}: {text} ({time.perf_counter() - started:.0f} s wall, "
              f"{done.get('steps', '?')} steps)", flush=True)
    row = {"scene": scene.name, "method": method,
           "protocol": f"train on one half, detect on the other ({args.steps} steps, batch {args.batch}, "
                       f"{args.tile}² tiles), both folds pooled", "folds": folds}
    scored = [fold for fold in folds if "f1" in fold]
    if scored:
        row.update(from_counts(*[sum(fold[key] for fold in scored) for key in ("tp", "fp", "fn", "tn")]))
        halves_free = [fold["label_free"] for fold in scored if "f1" in fold.get("label_free", {})]
        if len(halves_free) == len(scored):
            counts = [sum(half[key] for half in halves_free) for key in ("tp", "fp", "fn", "tn")]
            row["label_free_same_halves"] = {"method": halves_free[0]["method"], **from_counts(*counts)}
        row["cpu_s"] = round(sum(fold.get("train_cpu_s", 0) + fold.get("detect_cpu_s", 0) for fold in folds), 1)
    if len(scored) < len(folds):
        row["error"] = "; ".join(f"fold {fold['fold']}: {fold['error']}" for fold in folds if "error" in fold)
        if scored:
            row["partial"] = f"only fold {scored[0]['fold']} scored"
    return row


# ---------------------------------------------------------------- results


def merge(path: Path | None, rows: list[dict], settings: dict) -> dict:
    results = {"settings": settings, "rows": []}
    if path is not None and path.exists():
        results = json.loads(path.read_text())
        results["settings"] = settings
    keys = {(row["scene"], row["method"]) for row in rows}
    kept = [row for row in results["rows"] if (row["scene"], row["method"]) not in keys]
    order = list(SCENES)
    results["rows"] = sorted(kept + rows, key=lambda r: (order.index(r["scene"]) if r["scene"] in order else 99,
                                                         (LABEL_FREE + TRAINED).index(r["method"])))
    return results


def markdown(results: dict) -> str:
    lines = ["| scene | method | protocol | OA | kappa | F1 | CPU s | notes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for row in results["rows"]:
        if "f1" not in row:
            lines.append(f"| {row['scene']} | {row['method']} | {row['protocol'].split(' (')[0]} | – | – | – | – | "
                         f"failed: {row.get('error', '?')[:160]} |")
            continue
        notes = []
        if row["method"] in TRAINED:
            notes.append("folds F1 " + " / ".join(f"{fold['fold']} {fold['f1']:.3f}" if "f1" in fold
                                                   else f"{fold['fold']} failed" for fold in row["folds"]))
            notes.append("steps " + " / ".join(str(fold.get("steps", "–")) for fold in row["folds"]))
            same = row.get("label_free_same_halves")
            if same:
                notes.append(f"{same['method']} on the same halves κ {same['kappa']:.3f} / F1 {same['f1']:.3f}")
            protocol = "half → other half"
        else:
            notes.append(f"method {row['method_s']:.1f} s")
            protocol = "whole scene"
        if row.get("error"):
            notes.append(f"error: {row['error'][:120]}")
        lines.append(f"| {row['scene']} | {row['method']} | {protocol} | {row['oa']:.3f} | {row['kappa']:.3f} | "
                     f"{row['f1']:.3f} | {row['cpu_s']:.0f} | {'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--methods", nargs="+", default=list(LABEL_FREE + TRAINED), choices=LABEL_FREE + TRAINED,
                        help="Run these where they apply (label-free by the scene's kind; trained where trainable).")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/changeflow-accuracy"))
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="The shared data folder.")
    parser.add_argument("--json", type=Path, default=None, help="Results JSON (merged by scene and method).")
    parser.add_argument("--markdown", type=Path, default=None, help="Write the table of all rows in --json here.")
    parser.add_argument("--steps", type=int, default=200, help="Optimiser-step budget per fold.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tile", type=int, default=64, help="Training tile side (stride half of it).")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--change-share", type=float, default=0.5,
                        help="train.sampling.change_share (0: one shuffled pass over the tiles per epoch).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coregister", action="store_true", help="Turn prepare's co-registration on.")
    parser.add_argument("--black-value", type=float, default=-1.0,
                        help="tiling.black_value (prepare's default is 5; -1: no pixel of these sets is nodata).")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"real data folder {args.data} is missing", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir = args.workdir.resolve()
    run = Runner(args.workdir)
    settings = {"steps": args.steps, "batch": args.batch, "tile": args.tile, "stride": args.tile // 2,
                "lr": args.lr, "change_share": args.change_share, "pseudo_methods": PSEUDO_METHOD, "seed": args.seed, "gap_px": GAP, "coregistration": bool(args.coregister),
                "black_value": args.black_value, "split_train_half": {"train": 0.8, "val": 0.2}}
    rows: list[dict] = []
    for name in args.scenes:
        scene = SCENES[name]
        methods = [method for method in args.methods if method in scene.methods]
        print(f"{name}: {', '.join(methods) or 'nothing to run'}  ({scene.note})", flush=True)
        label_free = [method for method in methods if method in LABEL_FREE]
        if label_free:
            rows += run_label_free(scene, label_free, args, run)
        for model in (method for method in methods if method in TRAINED):
            rows.append(run_trained(scene, model, args, run))
        if args.json:  # after every scene: an interrupted run keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(merge(args.json, rows, settings), indent=1, ensure_ascii=False))
    results = merge(args.json, rows, settings) if args.json else merge(None, rows, settings)
    table = markdown(results)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
