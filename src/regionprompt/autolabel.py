"""Auto-labelling a folder of images into a COCO or YOLO dataset, resumable after any interruption.

Progress lives in an append-only journal, ``OUT/.regionprompt-label/journal.jsonl``: one JSON line per
image, written and fsynced as soon as the image is done (``{"file", "status": "ok", "width", "height",
"detections": [{"box" xyxy px, "label", "score"}]}`` or ``{"file", "status": "unreadable", "error"}``).
A rerun reads it, drops a torn last line (a kill mid-write), skips the images it lists and labels the
rest; the dataset is then written from the journal alone, sorted by file name, so an interrupted and
resumed run writes byte for byte what an uninterrupted one writes. Images are labelled one at a time:
a detection never depends on which other images shared its batch.

Sharded jobs (``shard=Shard(i, n)``, ``--shard i/n``: image ``k`` of the sorted list goes to job
``k % n``) each append to their own ``journal-i-of-n.jsonl`` and write no dataset; a run without a shard
reads every journal in the folder, labels what none of them lists (a failed shard's images), and writes
the dataset, each image once, identical to an unsharded run's.

``run.json`` beside the journal records the settings (model, concepts, threshold, folder); a rerun
with other settings is refused rather than mixing two runs in one dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regionprompt.concept import PromptConcept
from regionprompt.data.coco import write_coco
from regionprompt.data.files import IMAGE_SUFFIXES, atomic_write_text, dump_json
from regionprompt.data.model import Annotation, Category, DetectionDataset, ImageRecord
from regionprompt.data.yolo import write_yolo
from regionprompt.errors import ImageLoadError, RegionPromptError
from regionprompt.images import load_image
from regionprompt.logging_utils import get_logger, progress_bar
from regionprompt.sharding import Shard
from regionprompt.untrusted import check_path_name, loads_json

LOG = get_logger("autolabel")

STATE_DIR = ".regionprompt-label"
JOURNAL_FILE = "journal.jsonl"
RUN_FILE = "run.json"
REPORT_FILE = "label_report.json"
COCO_FILE = "annotations.json"
FORMATS = ("coco", "yolo")


def list_images(folder: Path, *, exclude: Path | None = None) -> list[str]:
    """Image files under ``folder`` (recursive, by suffix), as sorted ``/``-separated relative paths;
    files under ``exclude`` (the output folder, when it lies inside) are left out."""
    if not folder.is_dir():
        raise RegionPromptError(f"{folder}: not a folder of images")
    skip = exclude.resolve() if exclude is not None else None
    found = []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        found.append(path.relative_to(folder).as_posix())
    return sorted(found)


class Journal:
    """The append-only progress journal (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, *, repair: bool = True) -> dict[str, dict[str, Any]]:
        """``{file: record}`` of finished images; a torn last line is ignored, and cut off the file when
        ``repair`` (only the journal's own writer may: another job may be appending to it)."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data) and repair:
            LOG.info("%s: dropping a partly written last line (interrupted run)", self.path)
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        records: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(data[:end].splitlines(), 1):
            try:
                record = loads_json(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                raise RegionPromptError(f"{self.path}, line {number}: not a journal record; "
                                        "delete the output folder to start over")
            records.setdefault(record["file"], record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())


def _digest(tensor: Any) -> str:
    return hashlib.sha256(tensor.detach().float().contiguous().numpy().tobytes()).hexdigest()


def run_settings(detector: Any, folder: Path, concepts: Sequence[PromptConcept], threshold: float, *,
                 one_label_per_box: bool = True) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption."""
    return {
        "folder": str(folder.resolve()),
        "model_hash": detector.model_hash,
        "threshold": threshold,
        "one_label_per_box": one_label_per_box,
        "concepts": [{"name": c.name, "embedding_sha256": _digest(c.embedding),
                      "negatives_sha256": _digest(c.negatives)} for c in concepts],
    }


@dataclass(frozen=True)
class LabelReport:
    """The outcome of :func:`label_folder` (also written to ``OUT/label_report.json``)."""

    images: int
    labelled: int
    resumed: int  # images already in the journal when this run started
    detections: int
    per_category: dict[str, int]
    unreadable: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "labelled": self.labelled, "resumed": self.resumed,
                "detections": self.detections, "per_category": self.per_category, "unreadable": self.unreadable}


def _record(detector: Any, folder: Path, name: str, concepts: Sequence[PromptConcept], threshold: float,
            one_label_per_box: bool) -> dict[str, Any]:
    try:
        image = load_image(folder / name, name=name)
    except ImageLoadError as exc:
        return {"file": name, "status": "unreadable", "error": str(exc)}
    [dets] = detector.predict([image], concepts=list(concepts), threshold=threshold,
                              one_label_per_box=one_label_per_box)
    return {
        "file": name, "status": "ok", "width": image.wh[0], "height": image.wh[1],
        "detections": [{"box": box, "label": label, "score": score}
                       for box, label, score in zip(dets.boxes.tolist(), dets.labels.tolist(), dets.scores.tolist())],
    }


def _journal_path(state: Path, shard: Shard | None) -> Path:
    return state / (JOURNAL_FILE if shard is None else f"journal-{shard.tag}.jsonl")


def read_journals(state: Path, own: Journal) -> dict[str, dict[str, Any]]:
    """Finished images of every journal in ``state`` (``own`` repaired, the others only read), first
    record of an image kept: the main journal, then the shard journals by name."""
    records = own.read()
    others = sorted(p for p in state.glob("journal*.jsonl") if p != own.path)
    for path in sorted(others, key=lambda p: p.name != JOURNAL_FILE):
        for name, record in Journal(path).read(repair=False).items():
            records.setdefault(name, record)
    return records


def journal_dataset(records: dict[str, dict[str, Any]], names: Sequence[str], settings: dict[str, Any]) -> DetectionDataset:
    """The dataset the journal describes: readable images sorted by file (ids 1..N), category ``i + 1``
    = ``names[i]``, boxes COCO xywh rounded to 0.01 px, each annotation's ``score`` kept."""
    images, annotations = [], []
    for image_id, name in enumerate(sorted(f for f, r in records.items() if r["status"] == "ok"), 1):
        record = records[name]
        images.append(ImageRecord(image_id, name, int(record["width"]), int(record["height"])))
        for det in record["detections"]:
            x1, y1, x2, y2 = det["box"]
            bbox = (round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2))
            annotations.append(Annotation(len(annotations) + 1, image_id, int(det["label"]) + 1, bbox,
                                          round(bbox[2] * bbox[3], 2), extra={"score": round(det["score"], 5)}))
    categories = [Category(i + 1, name) for i, name in enumerate(names)]
    info = {"description": "auto-labelled by regionprompt label", "model_hash": settings["model_hash"],
            "threshold": settings["threshold"]}
    return DetectionDataset(tuple(images), tuple(annotations), tuple(categories), extra={"info": info})


def label_folder(detector: Any, folder: str | os.PathLike, out: str | os.PathLike, concepts: Sequence[PromptConcept], *,
                 threshold: float | None = None, fmt: str = "coco", split: str = "train", images: str = "link",
                 one_label_per_box: bool = True, shard: Shard | None = None) -> LabelReport:
    """Label every image under ``folder`` with ``concepts`` and write a dataset to ``out``.

    Args:
        detector: a :class:`~regionprompt.api.Detector`.
        concepts: what to find (e.g. from ``detector.make_concepts(text=...)``); category order = this order.
        fmt: ``"coco"`` (``OUT/annotations.json``, file names relative to ``folder``) or ``"yolo"``
            (``OUT/data.yaml``, ``OUT/labels/<split>``, images linked or copied into ``OUT/images/<split>``).
        images: YOLO only: ``link`` (hardlink, else copy), ``copy`` or ``none``.
        one_label_per_box: class-agnostic NMS, so each object is labelled once, with its best category
            (``False``: one annotation per category that finds it).
        shard: label only this shard's images into its own journal and write no dataset (module
            docstring); the report then counts the shard's images.
    Raises:
        RegionPromptError: ``out`` holds a run with other settings, no images, no concepts.
    """
    folder, out = Path(folder), Path(out)
    if fmt not in FORMATS:
        raise RegionPromptError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not concepts:
        raise RegionPromptError("nothing to label: give text, exemplar or concept prompts")
    if fmt == "yolo":  # checked before any work: the split becomes OUT/images/<split> and OUT/labels/<split>
        check_path_name(split, what="split", single=True)
    files = list_images(folder, exclude=out)
    if not files:
        raise RegionPromptError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    state = out / STATE_DIR
    if threshold is None:
        threshold = detector.default_threshold
    settings = run_settings(detector, folder, concepts, threshold, one_label_per_box=one_label_per_box)
    run_path = state / RUN_FILE
    if run_path.is_file():
        try:
            previous = loads_json(run_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if not isinstance(previous, dict):
            raise RegionPromptError(f"{run_path}: not a labelling run record; delete {out} to start over")
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise RegionPromptError(f"{out} holds a labelling run with other settings ({', '.join(changed)} differ); "
                                    "use another --out, or delete it to start over")
    else:
        atomic_write_text(run_path, dump_json(settings, indent=2))
    journal = Journal(_journal_path(state, shard))
    records = read_journals(state, journal)
    todo = files if shard is None else [f for k, f in enumerate(files) if shard.owns(k)]
    resumed = sum(1 for f in todo if f in records)
    bar = progress_bar(desc="labelling" if shard is None else f"labelling shard {shard}", total=len(todo),
                       initial=resumed, unit="img")
    try:
        for name in todo:
            if name in records:
                continue
            record = _record(detector, folder, name, concepts, threshold, one_label_per_box)
            journal.append(record)
            records[name] = record
            bar.update(1)
    finally:
        bar.close()
    if shard is not None:
        mine = [records[f] for f in todo]
        found = [concepts[int(d["label"])].name for r in mine for d in r.get("detections", ())]
        return LabelReport(images=len(todo), labelled=sum(r["status"] == "ok" for r in mine), resumed=resumed,
                           detections=len(found), per_category={c.name: found.count(c.name) for c in concepts},
                           unreadable=[{"file": r["file"], "error": r["error"]} for r in mine if r["status"] == "unreadable"])
    records = {f: records[f] for f in files if f in records}
    dataset = journal_dataset(records, [c.name for c in concepts], settings)
    if fmt == "coco":
        write_coco(dataset, out / COCO_FILE)
    else:
        write_yolo(dataset, out, split=split, image_dir=folder, images=images)
    per_category = {c.name: 0 for c in concepts}
    for ann in dataset.annotations:
        per_category[concepts[ann.category_id - 1].name] += 1
    report = LabelReport(
        images=len(files), labelled=len(dataset.images), resumed=resumed, detections=len(dataset.annotations),
        per_category=per_category,
        unreadable=[{"file": f, "error": r["error"]} for f, r in records.items() if r["status"] == "unreadable"],
    )
    atomic_write_text(out / REPORT_FILE, dump_json({"folder": str(folder), "format": fmt, **report.to_dict()}, indent=2))
    return report
