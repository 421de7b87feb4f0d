"""The trained model beside label-free methods: one table of their scores on the same prepared groups.

A run (``changeflow run`` with ``compare: [METHOD, ...]``) detects every group with the trained
checkpoint and with each label-free method; this module puts the detection summaries' pixel and
object metrics side by side, per group, so a user sees whether training beat the label-free map.
"""

from __future__ import annotations

from typing import Any

PIXEL = ("f1", "kappa", "iou", "precision", "recall", "oa")


def compare_detections(detections: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Scores per group and detector.

    Args:
        detections: detector name (``"trained"`` or a method) → the detect flow's summaries
            (group → summary; a summary with ``metrics`` when the group has a label).

    Returns:
        group → detector → the pixel metrics of :data:`PIXEL` and the object F1 (``object_f1``);
        groups without metrics for any detector are left out, a failed detector is absent from its group.
    """
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, summaries in detections.items():
        for group, summary in summaries.items():
            metrics = summary.get("metrics") if isinstance(summary, dict) else None
            if not metrics:
                continue
            scores = {key: float(metrics["pixel"][key]) for key in PIXEL}
            if "object" in metrics:
                scores["object_f1"] = float(metrics["object"]["f1"])
            table.setdefault(group, {})[name] = scores
    return table


def comparison_markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """The comparison as a Markdown table, best pixel F1 of each group in bold.

    Args:
        table: the result of :func:`compare_detections`.

    Returns:
        One row per group and detector: F1, kappa, IoU, precision, recall, OA, object F1.
    """
    lines = ["| group | detector | F1 | kappa | IoU | precision | recall | OA | object F1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for group, detectors in table.items():
        best = max(detectors, key=lambda name: detectors[name]["f1"])
        for name, scores in detectors.items():
            cells = [f"{scores[key]:.3f}" for key in PIXEL]
            if name == best:
                cells[0] = f"**{cells[0]}**"
            object_f1 = f"{scores['object_f1']:.3f}" if "object_f1" in scores else "–"
            lines.append(f"| {group} | {name} | {' | '.join(cells)} | {object_f1} |")
    return "\n".join(lines) + "\n"
