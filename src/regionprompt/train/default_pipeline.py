"""``regionprompt train default``: the shipped detector, reproduced from nothing with one call.

Stages, in order (:data:`STAGES`); each is resumable, and a stage whose output is complete and was made
with the same settings and inputs is skipped on a rerun (``OUT/pipeline.json`` records each stage's
settings key and wall time)::

    scenes         scene caches (iconic pretrain for the teacher, det-train for the RPN and T-Rex2 -- one
                   cache when their specs agree --, pretrain scenes for the pseudo labels) and the
                   evaluation build (EmojiWorld test)                                   -> CACHES/, OUT/world_test*/
    teacher        CLIP teacher, :func:`~regionprompt.train.clip_pretrain.train_clip`   -> OUT/teacher/model
    rpn            proposal network, :func:`~regionprompt.train.rpn.train_rpn`          -> OUT/rpn/model
    trex2          (``trex2`` set) T-Rex2 on the teacher's image tower and frozen text side,
                   :func:`~regionprompt.train.trex2.train_trex2`                        -> OUT/trex2/model
    namer          (``namer_tuning`` set) the region namer: the teacher fine-tuned on base boxes
                   (RegionCLIP transfer, foreground RoIs), its tower mixed with the teacher's
                   (:mod:`~regionprompt.train.namer_tuning`)                            -> OUT/namer/namer
    pseudo-labels  (student only) the teacher's region labels on pretrain scenes        -> OUT/pseudo_labels
    student        (student only) RegionCLIP region-text pretraining                    -> OUT/student/model
    detector       candidate detector folders: zero-shot RegionCLIP per CLIP model (+ the RPN) as
                   ``teacher`` / ``student``, the T-Rex2 detector as ``trex2``           -> OUT/candidates/NAME
    evaluate       ``eval-detector --mode text`` on the evaluation build, per candidate  -> OUT/eval/NAME
    card           the best candidate by AP50 (ties: teacher, student, trex2 in that order) -> OUT/detector,
                   with its model_card.json
    install        (``install_to``) a float16 copy into the package's models/default

Every stage calls the library function of its command (no subprocesses); progress bars come from them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from regionprompt.data.files import atomic_write_text, dump_json
from regionprompt.errors import DatasetError, RegionPromptError
from regionprompt.eval.report import percent
from regionprompt.logging_utils import get_logger
from regionprompt.train.default_card import (
    MODEL_CARD_FILE,
    build_model_card,
    copy_detector,
    install_detector,
    read_json,
    write_model_card,
)
from regionprompt.train.default_recipe import DefaultPipelineConfig
from regionprompt.train.finalize import MODEL_DIR, RECIPE_FILE
from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec

_log = get_logger("train.default")

STATE_FILE = "pipeline.json"
STAGES = ("scenes", "teacher", "rpn", "trex2", "namer", "pseudo-labels", "student", "detector", "evaluate", "card", "install")
#: The candidates, in the order that breaks AP50 ties (the earlier is kept).
CANDIDATES = ("teacher", "student", "trex2")
MODEL_NAME = "regionprompt-default"
EVAL_PROTOCOL = ("eval-detector --mode text: every image searched for the whole EmojiWorld vocabulary (1,177 names) "
                 "with text prompts; boxes from the RPN (RegionCLIP detectors) or the detector's own queries "
                 "(T-Rex2); COCO AP/AP50 for all, base and novel categories")


# ---- layout -------------------------------------------------------------------------------------------


def cache_name(spec: SceneCacheSpec) -> str:
    """Folder name of a scene cache: everything that tells two caches apart, so one caches folder can be
    shared between runs."""
    return f"{spec.split}-{spec.layout}-{spec.size}px-{spec.num_images}-seed{spec.seed}"


def scene_specs(config: DefaultPipelineConfig) -> dict[str, SceneCacheSpec]:
    """The scene caches the recipe trains on: ``teacher``, ``rpn`` (each unless it comes from committed
    weights), (T-Rex2 on) ``trex2`` -- the spec
    :func:`~regionprompt.train.trex2.train_trex2` renders, often equal to the RPN's and then one folder --
    and (student only) ``pseudo_labels``."""
    t, r = config.teacher, config.rpn
    specs = {}
    if config.teacher_weights is None:
        specs["teacher"] = SceneCacheSpec("pretrain", t.world_seed, t.num_scenes, int(t.image_size or 0), layout=t.layout)
    if config.rpn_weights is None:
        specs["rpn"] = SceneCacheSpec("det-train", r.world_seed, r.num_scenes, r.image_size)
    if config.trex2 is not None:
        x = config.trex2
        specs["trex2"] = SceneCacheSpec("det-train", x.world_seed, x.num_scenes, x.image_size)
    if config.namer_tuning is not None:
        n = config.namer_tuning
        specs["namer"] = SceneCacheSpec("det-train", n.world_seed, n.num_scenes, n.scene_size)
        if n.caption_weight > 0:  # the caption term's iconic image-caption pairs (train/caption_regions.py)
            specs["namer_captions"] = SceneCacheSpec("pretrain", n.world_seed, n.caption_images, n.caption_size,
                                                     layout="iconic")
    if config.student:
        specs["pseudo_labels"] = SceneCacheSpec("pretrain", config.pseudo_label_seed, config.pseudo_label_scenes,
                                                config.pseudo_label_size)
    return specs


@dataclass(frozen=True)
class PipelinePaths:
    """Where each stage writes, under the run folder ``out`` (scene caches under ``caches``)."""

    out: Path
    caches: Path

    def cache(self, spec: SceneCacheSpec) -> Path:
        return self.caches / cache_name(spec)

    def world_test(self, config: DefaultPipelineConfig) -> Path:
        return self.out / f"world_test{config.eval_images}_seed{config.eval_seed}"

    @property
    def teacher(self) -> Path:
        return self.out / "teacher"

    @property
    def rpn(self) -> Path:
        return self.out / "rpn"

    @property
    def trex2(self) -> Path:
        return self.out / "trex2"

    @property
    def namer(self) -> Path:
        return self.out / "namer"

    @property
    def pseudo_labels(self) -> Path:
        return self.out / "pseudo_labels"

    @property
    def student(self) -> Path:
        return self.out / "student"

    def candidate(self, name: str) -> Path:
        return self.out / "candidates" / name

    def evaluation(self, name: str) -> Path:
        return self.out / "eval" / name

    @property
    def detector(self) -> Path:
        return self.out / "detector"

    @property
    def embeddings(self) -> Path:
        return self.out / "embeddings.sqlite"


# ---- stage bookkeeping ----------------------------------------------------------------------------------


def settings_key(value: Any) -> str:
    """A short stable digest of JSON-able settings (dataclasses included)."""
    text = json.dumps(value, sort_keys=True, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageReport:
    """One stage of one invocation.

    Attributes:
        name: the stage (:data:`STAGES`).
        status: ``"ran"``, ``"skipped"`` (output already complete), ``"adopted"`` (a complete output this
            pipeline did not record, e.g. a model trained earlier by the stage's own command) or ``"off"``
            (not part of this recipe) or ``"committed"`` (taken from committed stage weights).
        seconds: wall time in this invocation.
        total_seconds: wall time of every invocation that went into the output (what the card records).
        output: the stage's output path.
        note: a short result (final loss, AP...).
    """

    name: str
    status: str
    seconds: float
    total_seconds: float
    output: str
    note: str = ""


class PipelineState:
    """``OUT/pipeline.json``: per stage, its settings key, whether it finished, and its wall time so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stages: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                self.stages = dict(json.loads(path.read_text(encoding="utf-8")).get("stages", {}))
            except (json.JSONDecodeError, AttributeError):
                _log.warning("%s is unreadable; every stage is checked again", path)

    def record(self, name: str, key: str, seconds: float, *, done: bool, note: str = "") -> None:
        self.stages[name] = {"key": key, "done": done, "seconds": round(seconds, 2), "note": note,
                             "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_text(self.path, dump_json({"format": 1, "stages": self.stages}, indent=2))

    def run(self, name: str, key: str, output: Path, complete: Callable[[], bool],
            work: Callable[[], str | None], *, adopt: Callable[[], tuple[float, str]] | None = None) -> StageReport:
        """Skip the stage when its record says done with ``key`` and ``complete()`` agrees; else ``work()``.

        The time of an interrupted attempt is kept and added to the next one with the same key. A stage
        without a record whose output is complete is adopted when ``adopt`` is given: it returns the
        wall time and a note (e.g. from the trainer's ``recipe.json``).
        """
        record = self.stages.get(name, {})
        if record.get("done") and record.get("key") == key and complete():
            return StageReport(name, "skipped", 0.0, float(record.get("seconds", 0.0)), str(output), record.get("note", ""))
        if not record and adopt is not None and complete():
            seconds, note = adopt()
            self.record(name, key, seconds, done=True, note=note)
            return StageReport(name, "adopted", 0.0, seconds, str(output), note)
        before = float(record.get("seconds", 0.0)) if record.get("key") == key and not record.get("done") else 0.0
        began = time.perf_counter()
        try:
            note = work() or ""
        except BaseException:
            self.record(name, key, before + time.perf_counter() - began, done=False)
            raise
        seconds = time.perf_counter() - began
        self.record(name, key, before + seconds, done=True, note=note)
        return StageReport(name, "ran", seconds, before + seconds, str(output), note)


@dataclass(frozen=True)
class PipelineResult:
    """What :func:`run_default_pipeline` did: the stages, the final detector folder and its model card."""

    out_dir: Path
    detector_dir: Path
    stages: tuple[StageReport, ...]
    card: dict[str, Any]
    installed: Path | None = None

    def table(self) -> str:
        """A plain-text table of the stages (what ran, what was skipped, time, output)."""
        rows = [("stage", "status", "this run", "total", "result", "output")]
        for s in self.stages:
            rows.append((s.name, s.status, _duration(s.seconds) if s.status == "ran" else "-",
                         _duration(s.total_seconds) if s.status != "off" else "-", s.note, s.output))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
        return "\n".join(line.rstrip() for line in lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ---- completeness checks --------------------------------------------------------------------------------


def _cache_complete(directory: Path, spec: SceneCacheSpec) -> bool:
    try:
        return SceneCache(directory).spec == spec
    except DatasetError:
        return False


def _build_complete(directory: Path, config: DefaultPipelineConfig) -> bool:
    path = directory / "annotations.json"
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    info = data.get("info", {})
    return (info.get("split") == "test" and info.get("seed") == config.eval_seed
            and len(data.get("images", [])) == config.eval_images)


def _model_complete(run_dir: Path, recipe: Any, *, ignore: tuple[str, ...] = ()) -> bool:
    """A finished training run: its model folder and a ``recipe.json`` with this recipe (fields in
    ``ignore`` not compared)."""
    model = run_dir / MODEL_DIR
    if not ((model / "card.json").is_file() and (model / "model.safetensors").is_file() and (run_dir / RECIPE_FILE).is_file()):
        return False
    recorded = json.loads((run_dir / RECIPE_FILE).read_text(encoding="utf-8")).get("recipe")
    if not isinstance(recorded, dict):
        return False
    expected = json.loads(json.dumps(asdict(recipe), default=str))
    return {k: v for k, v in recorded.items() if k not in ignore} == {k: v for k, v in expected.items() if k not in ignore}


def _trex2_complete(run_dir: Path, recipe: Any, teacher_hash: str) -> bool:
    """A finished T-Rex2 run of ``recipe`` on the teacher with weights ``teacher_hash``.

    The recorded ``clip`` is a path (where the teacher was when it trained), so the teacher is
    recognised by the hash its card carries inside the T-Rex2 card instead: moving the run folder keeps
    the model, a retrained teacher does not.
    """
    if not _model_complete(run_dir, recipe, ignore=("clip",)):
        return False
    return read_json(run_dir / MODEL_DIR / "card.json").get("clip", {}).get("weights_hash") == teacher_hash


def _weights_hash(model_dir: Path) -> str:
    return str(read_json(model_dir / "card.json").get("weights_hash"))


def _adopt_run(run_dir: Path) -> Callable[[], tuple[float, str]]:
    """For a training run found complete: its last invocation's wall time (``recipe.json``) and loss."""

    def adopt() -> tuple[float, str]:
        record = json.loads((run_dir / RECIPE_FILE).read_text(encoding="utf-8"))
        return float(record.get("seconds_last_invocation") or 0.0), f"{_final_loss(run_dir)} (adopted)".strip()

    return adopt


def _final_loss(run_dir: Path) -> str:
    record = json.loads((run_dir / RECIPE_FILE).read_text(encoding="utf-8"))
    loss = record.get("final_loss", (record.get("final_losses") or {}).get("loss"))
    return f"loss {loss:.3f}" if isinstance(loss, (int, float)) else ""


def committed_weights(spec: str, what: str) -> Path:
    """A committed stage-weights folder (e.g. ``weights/student8-minilm``), checked to hold a model.

    Relative paths are read from the working directory (a clone of the repository)."""
    folder = Path(spec)
    if not ((folder / "card.json").is_file() and (folder / "model.safetensors").is_file()):
        raise RegionPromptError(f"the {what} weights {spec!r} are missing (card.json + model.safetensors); run "
                                "`regionprompt train default` from a clone of the repository, whose weights/ folder "
                                "holds them, or give the recipe another folder")
    return folder


def _model_record(model_dir: Path) -> dict[str, Any]:
    """The ``recipe.json`` of a stage's output: beside the model folder (``RUN/model``) or inside it
    (committed weights), with the weights hash."""
    beside, inside = model_dir.parent / RECIPE_FILE, model_dir / RECIPE_FILE
    path = beside if model_dir.name == MODEL_DIR and beside.is_file() else inside
    record = read_json(path) if path.is_file() else {}
    return {**record, "weights_hash": _weights_hash(model_dir), "folder": str(model_dir)}


def _recorded_seconds(model_dir: Path) -> float:
    """Training wall time recorded with committed weights (0 when none is)."""
    value = _model_record(model_dir).get("seconds_last_invocation")
    return float(value) if isinstance(value, (int, float)) else 0.0


# ---- the pipeline ---------------------------------------------------------------------------------------


def run_default_pipeline(config: DefaultPipelineConfig, out_dir: str | Path, *, caches_dir: str | Path | None = None,
                         install_to: str | Path | None = None, half: bool = True,
                         command: str | None = None) -> PipelineResult:
    """Run (or resume) every stage of ``config`` into ``out_dir``; see the module docstring.

    Args:
        config: the recipe (:func:`~regionprompt.train.default_recipe.default_profile` or ``fast_profile``).
        out_dir: the run folder.
        caches_dir: where scene caches live (default ``out_dir/caches``); share one between runs.
        install_to: copy the final detector folder here (``regionprompt.api.default_model_dir()`` for the
            package default); ``None``: do not install.
        half: install float16 weights (when they pass the comparison with float32).
        command: the command line, recorded in the model card.
    Raises:
        RegionPromptError: a stage failed on bad settings (e.g. a run folder holding another recipe's checkpoint).
    """
    import torch

    from regionprompt.api import NAMER_CONFIG, Detector
    from regionprompt.detect.rpn import ProposalNetwork
    from regionprompt.eval.detector_eval import evaluate_detector
    from regionprompt.eval.detector_eval_config import DetectorEvalConfig
    from regionprompt.interop.checkpoints import load_checkpoint
    from regionprompt.regionclip.label_store import PseudoLabels
    from regionprompt.regionclip.pseudo_labels import (
        EMOJIWORLD_POOL,
        load_pool_names,
        pseudo_label,
    )
    from regionprompt.train.checkpointing import load_train_state
    from regionprompt.train.clip_pretrain import train_clip
    from regionprompt.train.loop import CHECKPOINT_FILE
    from regionprompt.train.namer_tuning import tuned_namer, tuned_tower
    from regionprompt.train.ov_transfer import train_regionclip_detector
    from regionprompt.train.regions import train_regions
    from regionprompt.train.rpn import train_rpn
    from regionprompt.train.trex2 import train_trex2
    from regionprompt.trex2.model import TRex2
    from regionprompt.vl.clip_model import RegionPromptCLIP
    from regionprompt.vl.embeddings import EmbeddingCache
    from regionprompt.world.build import build_world
    from regionprompt.world.scene_cache import build_scene_cache

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = PipelinePaths(out, Path(caches_dir) if caches_dir is not None else out / "caches")
    state = PipelineState(out / STATE_FILE)
    specs = scene_specs(config)
    world_test = paths.world_test(config)
    reports: list[StageReport] = []

    def off(name: str) -> None:
        reports.append(StageReport(name, "off", 0.0, 0.0, "-"))

    # -- scenes
    unique_specs = list(dict.fromkeys(specs.values()))  # the RPN and T-Rex2 usually share one cache

    def render() -> str:
        for spec in unique_specs:
            build_scene_cache(spec, paths.cache(spec), workers=config.workers)
        if not _build_complete(world_test, config):
            build_world(world_test, split="test", num_images=config.eval_images, seed=config.eval_seed,
                        workers=config.workers, overwrite=True)
        return f"{len(unique_specs)} caches, {config.eval_images} test images"

    scenes_key = settings_key({"specs": specs, "eval": [config.eval_images, config.eval_seed]})
    reports.append(state.run(
        "scenes", scenes_key, paths.caches,
        lambda: all(_cache_complete(paths.cache(s), s) for s in specs.values()) and _build_complete(world_test, config),
        render))

    # -- teacher and RPN: trained here, or taken from committed stage weights
    def stage_model(name: str, committed: str | None, run_dir: Path, recipe: Any, train: Callable[[], Any]) -> Path:
        if committed is not None:
            model = committed_weights(committed, name)
            reports.append(StageReport(name, "committed", 0.0, _recorded_seconds(model), str(model),
                                       f"weights {_weights_hash(model)[:12]}"))
            return model

        def work() -> str:
            train()
            return _final_loss(run_dir)

        reports.append(state.run(name, settings_key(recipe), run_dir / MODEL_DIR, lambda: _model_complete(run_dir, recipe),
                                 work, adopt=_adopt_run(run_dir)))
        return run_dir / MODEL_DIR

    teacher_model = stage_model(
        "teacher", config.teacher_weights, paths.teacher, config.teacher,
        lambda: train_clip(config.teacher, paths.teacher, cache_dir=paths.cache(specs["teacher"]), workers=config.workers))
    rpn_model = stage_model(
        "rpn", config.rpn_weights, paths.rpn, config.rpn,
        lambda: train_rpn(config.rpn, paths.rpn, cache_dir=paths.cache(specs["rpn"]), workers=config.workers))

    candidates = {"teacher": teacher_model}

    # -- T-Rex2: trained on the teacher's model folder, whatever ``config.trex2.clip`` says
    if config.trex2 is not None:
        teacher_hash = _weights_hash(teacher_model)
        trex2_recipe = replace(config.trex2, clip=str(teacher_model))

        def train_detector_trex2() -> str:
            train_trex2(trex2_recipe, paths.trex2, cache_dir=paths.cache(specs["trex2"]), workers=config.workers,
                        text_cache=EmbeddingCache(paths.embeddings))
            return _final_loss(paths.trex2)

        reports.append(state.run(
            "trex2", settings_key({"recipe": replace(config.trex2, clip=f"teacher:{teacher_hash}")}),
            paths.trex2 / MODEL_DIR, lambda: _trex2_complete(paths.trex2, trex2_recipe, teacher_hash),
            train_detector_trex2, adopt=_adopt_run(paths.trex2)))
    else:
        off("trex2")

    # -- the region namer: the teacher, or the teacher tuned on base boxes and mixed back toward itself
    namer_model = teacher_model
    if config.namer_tuning is not None:
        namer_model = paths.namer / "namer"
        stop = config.namer_stop_step
        namer_key = settings_key({"recipe": config.namer_tuning, "mix": config.namer_mix, "stop": stop,
                                  "teacher": _weights_hash(teacher_model), "rpn": _weights_hash(rpn_model)})

        def tune_namer() -> str:
            checkpoint = paths.namer / CHECKPOINT_FILE
            done = load_train_state(checkpoint).step if checkpoint.is_file() else 0
            if stop is not None and done > stop:
                raise RegionPromptError(f"{checkpoint} is at step {done}, past the namer stop step {stop}; "
                                        "delete it or raise the stop step")
            if stop is None or done < stop:
                train_regionclip_detector(config.namer_tuning, paths.namer, clip=teacher_model, rpn=rpn_model,
                                          cache_dir=paths.cache(specs["namer"]), workers=config.workers,
                                          caption_cache_dir=(paths.cache(specs["namer_captions"])
                                                             if "namer_captions" in specs else None),
                                          text_cache=EmbeddingCache(paths.embeddings),
                                          max_steps_this_run=None if stop is None else stop - done)
            tuned, step, _ = tuned_tower(checkpoint)  # the loop checkpoints its last step, stopped or finished
            record = {"stage": "region namer: RegionCLIP transfer on base boxes, mixed with the teacher",
                      "recipe": asdict(config.namer_tuning), "steps_run": step}
            tuned_namer(teacher_model, tuned, config.namer_mix, record).save(namer_model)
            return f"step {step}, mix {config.namer_mix}"

        reports.append(state.run("namer", namer_key, namer_model,
                                 lambda: (namer_model / "model.safetensors").is_file(), tune_namer))
    else:
        off("namer")

    # -- optional student
    if config.student:
        pool = (str(teacher_model.parent / "concept_pool.json" if config.teacher_weights is None
                    else teacher_model / "concept_pool.json") if config.pseudo_label_pool == "teacher"
                else config.pseudo_label_pool)
        if config.pseudo_label_pool == "teacher" and not Path(pool).is_file():
            raise RegionPromptError(f"{pool} is missing: the teacher recipe has no caption-concept pool "
                                    f"(concept_weight 0); set pseudo_label_pool to {EMOJIWORLD_POOL!r} or a pool file")
        labels_key = settings_key({"teacher": _weights_hash(teacher_model), "rpn": _weights_hash(rpn_model),
                                   "config": config.pseudo_labels, "cache": specs["pseudo_labels"], "pool": pool})

        def labels_complete() -> bool:
            try:
                return len(PseudoLabels.open(paths.pseudo_labels, verify=False)) == config.pseudo_label_scenes
            except RegionPromptError:
                return False

        def make_labels() -> str:
            names, pool_source = load_pool_names(pool)
            rpn = ProposalNetwork.load(rpn_model)
            run = pseudo_label(load_checkpoint(teacher_model), rpn, SceneCache(paths.cache(specs["pseudo_labels"])), names,
                               paths.pseudo_labels, config.pseudo_labels, proposal_id=f"rpn:{rpn.card.weights_hash}",
                               pool_source=pool_source, embedding_cache=EmbeddingCache(paths.embeddings))
            labels = PseudoLabels.open(paths.pseudo_labels, verify=False)
            return f"{labels.num_regions} regions on {run.total_images} images"

        reports.append(state.run("pseudo-labels", labels_key, paths.pseudo_labels, labels_complete, make_labels))

        def train_student() -> str:
            train_regions(config.regions, paths.student, teacher=teacher_model, labels_dir=paths.pseudo_labels,
                          cache_dir=paths.cache(specs["pseudo_labels"]), embedding_cache=EmbeddingCache(paths.embeddings))
            return _final_loss(paths.student)

        reports.append(state.run("student", settings_key({"regions": config.regions, "labels": labels_key}),
                                 paths.student / MODEL_DIR, lambda: _model_complete(paths.student, config.regions),
                                 train_student, adopt=_adopt_run(paths.student)))
        candidates["student"] = paths.student / MODEL_DIR
    else:
        off("pseudo-labels")
        off("student")
    if config.trex2 is not None:
        candidates["trex2"] = paths.trex2 / MODEL_DIR
    candidates = {name: candidates[name] for name in CANDIDATES if name in candidates}  # tie-break order

    # -- detector folders
    hashes = {name: _weights_hash(model) for name, model in candidates.items()}
    rpn_hash = _weights_hash(rpn_model)
    detector_settings: dict[str, Any] = {"clip": {n: h for n, h in hashes.items() if n != "trex2"}, "rpn": rpn_hash,
                                         "config": config.detector.to_dict()}
    if "trex2" in candidates:  # only then: a recipe without T-Rex2 keeps the keys of earlier runs
        detector_settings["trex2"] = {"model": hashes["trex2"], "config": config.trex2_detect.to_dict()}
        if config.trex2_namer:
            detector_settings["trex2"]["namer"] = _weights_hash(namer_model)
            detector_settings["trex2"]["namer_config"] = NAMER_CONFIG.to_dict()
    detector_key = settings_key(detector_settings)

    def build_detectors() -> str:
        rpn = ProposalNetwork.load(rpn_model)
        for name, model in candidates.items():
            if name == "trex2":
                # The namer (the teacher's region encoder, maybe tuned) names T-Rex2's boxes for text prompts.
                namer = RegionPromptCLIP.load(namer_model) if config.trex2_namer else None
                detector = Detector.from_trex2(TRex2.load(model), config.trex2_detect, namer=namer)
            else:
                detector = Detector.from_models(RegionPromptCLIP.load(model), rpn, config.detector)
            detector.save(paths.candidate(name))
        return ", ".join(candidates)

    reports.append(state.run(
        "detector", detector_key, paths.candidate("*"),
        lambda: all((paths.candidate(n) / "detector.json").is_file() for n in candidates), build_detectors))

    # -- evaluation
    eval_config = DetectorEvalConfig(mode="text", max_detections=config.eval_max_detections,
                                     batch_size=config.eval_batch_size)
    eval_key = settings_key({"detector": detector_key, "eval": eval_config, "gt": [config.eval_images, config.eval_seed]})

    def evaluate() -> str:
        notes = []
        for name in candidates:
            target = paths.evaluation(name)
            target.mkdir(parents=True, exist_ok=True)
            detector = Detector.load(paths.candidate(name), cache=EmbeddingCache(paths.embeddings))
            result = evaluate_detector(detector, world_test, eval_config, log_path=target / "progress.jsonl")
            atomic_write_text(target / "predictions.json", dump_json(list(result.predictions)))
            atomic_write_text(target / "report.md", result.to_markdown())
            atomic_write_text(target / "report.json", dump_json(result.to_dict(), indent=2))
            summary = result.summary()
            notes.append(f"{name} AP50 {percent(summary.get('AP50'))} (novel {percent(summary.get('AP50_novel'))})")
        return "; ".join(notes)

    reports.append(state.run(
        "evaluate", eval_key, paths.out / "eval",
        lambda: all((paths.evaluation(n) / "report.json").is_file() for n in candidates), evaluate))
    evaluations = {name: read_json(paths.evaluation(name) / "report.json") for name in candidates}
    chosen = choose_candidate(evaluations)

    # -- the final folder and its model card
    def write_card() -> str:
        copy_detector(paths.candidate(chosen), paths.detector)
        seconds = {r.name: r.total_seconds for r in reports if r.status != "off"}
        card = build_model_card(
            paths.detector, name=MODEL_NAME, description=_description(chosen, config), recipe=config.to_dict(),
            stage_records=_stage_records(paths, candidates, teacher_model, rpn_model, config), stage_seconds=seconds,
            evaluation=_evaluation_entry(evaluations, chosen, config), command=command)
        write_model_card(paths.detector, card)
        return f"chose {chosen}"

    card_key = settings_key({"eval": eval_key, "chosen": chosen, "hash": hashes[chosen]})
    reports.append(state.run("card", card_key, paths.detector,
                             lambda: (paths.detector / MODEL_CARD_FILE).is_file(), write_card))
    card = read_json(paths.detector / MODEL_CARD_FILE)

    installed = None
    if install_to is not None:
        began = time.perf_counter()
        gt = read_json(world_test / "annotations.json")
        images = [world_test / "images" / im["file_name"] for im in gt["images"][:2]]
        names_by_id = {c["id"]: c["name"] for c in gt["categories"]}
        present = sorted({names_by_id[a["category_id"]] for a in gt["annotations"]})
        texts = None
        if config.teacher_weights is None and config.teacher.text == "clip":  # only a CLIP text tower has a token embedding to cut
            texts = training_texts(config, paths, specs["teacher"], detector=chosen)
        with torch.no_grad():
            report = install_detector(paths.detector, Path(install_to), half=half, token_texts=texts,
                                      check_images=images, check_names=present)
        installed = report.target
        seconds = time.perf_counter() - began
        check = ", ".join(f"{k} {v:.4f}" for k, v in report.check.items())
        reports.append(StageReport("install", "ran", seconds, seconds, str(installed),
                                   report.storage + (f" ({check})" if check else "")))
    else:
        off("install")
    return PipelineResult(out, paths.detector, tuple(reports), card, installed)


def training_texts(config: DefaultPipelineConfig, paths: PipelinePaths, spec: SceneCacheSpec, *,
                   detector: str = "teacher") -> list[str]:
    """Every text the teacher's CLIP text tower was trained on: the captions of its scenes and the
    caption-concept phrases in each prompt template (what :func:`~regionprompt.vl.compact.keep_learnt_tokens`
    keeps), plus the pool in the detector's own templates.

    ``detector`` is the candidate being installed. ``"trex2"``: T-Rex2 carries the teacher's text side
    frozen, so the same texts apply, with its own templates, plus every base concept name in them --
    its text iterations trained the prompt projection on those names' features, whatever their tokens.
    """
    from regionprompt.vl.compact import teacher_training_texts
    from regionprompt.vl.templates import fill

    templates = config.trex2.templates if detector == "trex2" and config.trex2 is not None else config.detector.templates
    pool_path = paths.teacher / "concept_pool.json"
    texts = teacher_training_texts(paths.cache(spec), pool_path)
    if pool_path.is_file():
        pool = [c["name"] for c in read_json(pool_path).get("concepts", [])]
        texts += [text for name in pool for text in fill(templates, name)]
    if detector == "trex2":
        from regionprompt.world.concepts import load_concepts

        texts += [text for c in load_concepts().subset("base") for text in fill(templates, c.name)]
    return texts


def choose_candidate(evaluations: Mapping[str, Mapping[str, Any]]) -> str:
    """The candidate to keep: the highest AP50 (all categories; a missing one counts as 0), on a tie the
    first in :data:`CANDIDATES` order (the RegionCLIP teacher, then the student, then T-Rex2).

    Args:
        evaluations: per candidate name, its ``eval-detector`` report (``report.json``: ``summary.AP50``).
    Raises:
        ValueError: a name that is not one of :data:`CANDIDATES`, or no candidate.
    """
    unknown = sorted(set(evaluations) - set(CANDIDATES))
    if unknown or not evaluations:
        raise ValueError(f"unknown candidates {unknown} (expected some of {', '.join(CANDIDATES)})")
    return max(evaluations, key=lambda n: (evaluations[n]["summary"].get("AP50") or 0.0, -CANDIDATES.index(n)))


def _description(chosen: str, config: DefaultPipelineConfig) -> str:
    teacher = (f"{config.teacher.card}, {config.teacher.text} text tower, pretrained on {config.teacher.num_scenes} "
               f"{config.teacher.layout} {config.teacher.image_size} px image-caption pairs")
    if config.teacher_weights is not None:
        teacher = f"committed weights {config.teacher_weights}"
    if chosen == "trex2" and config.trex2 is not None:
        x = config.trex2
        return (f"T-Rex2 detector on EmojiWorld: {x.num_queries} DETR queries over a {x.encoder_layers}-layer "
                f"deformable encoder of the CLIP teacher's image tower ({teacher}), {x.decoder_layers} decoder layers, "
                f"dim {x.dim}, trained {x.steps} steps of batch {x.batch_size} on {x.num_scenes} det-train scenes at "
                f"{x.image_size} px (base boxes; text, box and point prompts, cycle {x.cycle!r}); text prompts go "
                f"through the teacher's frozen text side, box and point exemplars through its visual prompt "
                f"encoder.{_namer_sentence(config)} Profile {config.profile!r}.")
    clip = "the RegionCLIP student (region-text pretrained from the teacher's pseudo labels)" if chosen == "student" \
        else "the CLIP teacher"
    return (f"Zero-shot RegionCLIP detector on EmojiWorld: class-agnostic RPN proposals (trained on det-train base boxes) "
            f"classified by {clip} ({teacher}). Profile {config.profile!r}.")


def _namer_sentence(config: DefaultPipelineConfig) -> str:
    if not config.trex2_namer:
        return ""
    tuned = ""
    if config.namer_tuning is not None:
        steps = config.namer_stop_step or config.namer_tuning.steps
        tuned = (f", fine-tuned on base boxes ({steps} steps of batch {config.namer_tuning.batch_size}, RegionCLIP "
                 f"transfer) and mixed "
                 f"{config.namer_mix:g} : {1 - config.namer_mix:g} with the teacher in weight space")
    return f" Text-prompted boxes are named by the teacher's region encoder (RegionCLIP region namer{tuned})."


def _stage_records(paths: PipelinePaths, candidates: Mapping[str, Path], teacher_model: Path,
                   rpn_model: Path, config: DefaultPipelineConfig) -> dict[str, Any]:
    """What each trainer recorded (``recipe.json``: recipe, data, final loss, seconds), plus pseudo-label identity.

    A stage from committed weights contributes its folder's ``recipe.json`` and its weights hash."""
    records = {"teacher": _model_record(teacher_model), "rpn": _model_record(rpn_model)}
    if "trex2" in candidates:
        records["trex2"] = read_json(paths.trex2 / RECIPE_FILE)
        if config.namer_tuning is not None:
            records["namer"] = {**read_json(paths.namer / "namer" / "card.json").get("training", {}),
                                "mix": config.namer_mix, "weights_hash": _weights_hash(paths.namer / "namer")}
    if "student" in candidates:
        records["student"] = read_json(paths.student / RECIPE_FILE)
        meta = read_json(paths.pseudo_labels / "meta.json")
        records["pseudo_labels"] = {"identity": meta.get("identity"), "info": meta.get("info")}
    return records


def _evaluation_entry(evaluations: Mapping[str, dict[str, Any]], chosen: str, config: DefaultPipelineConfig) -> dict[str, Any]:
    report = evaluations[chosen]
    entry = {
        "protocol": EVAL_PROTOCOL,
        "data": f"EmojiWorld test split, seed {config.eval_seed}, {config.eval_images} images",
        "summary": report["summary"],
        "counts": report.get("counts", {}),
        "settings": report.get("settings", {}),
        "seconds": report.get("seconds"),
        "chosen": chosen,
    }
    if len(evaluations) > 1:
        entry["candidates"] = {name: r["summary"] for name, r in evaluations.items()}
        entry["choice"] = ("the candidate with the highest AP50 (all categories); on a tie the first of "
                           + ", ".join(n for n in CANDIDATES if n in evaluations))
    return entry


__all__ = ["CANDIDATES", "STAGES", "STATE_FILE", "PipelinePaths", "PipelineResult", "PipelineState", "StageReport", "cache_name",
           "choose_candidate", "run_default_pipeline", "scene_specs", "settings_key", "training_texts"]
