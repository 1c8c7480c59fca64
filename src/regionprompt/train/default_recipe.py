"""The recipe of the shipped default detector (``regionprompt train default``), and a tiny profile for tests.

Every stage's settings are the config dataclass of that stage's own trainer, so the recipe reads like
the commands it replaces. The default profile starts from committed stage weights (``weights/``)::

    (teacher: weights/student8-minilm -- RegionCLIP student of the GPU-trained teacher8, MiniLM text side)
    (proposals: weights/rpn)
    regionprompt train detector --arch trex2 --clip weights/student8-minilm --steps 4000 --batch-size 4 \
        --cycle tbtp --extra-negatives 1000 --paired-batches true --cross-image-prob 0.5 \
        --exemplar-mean-prob 0.2 --visual-text-negatives 128 --augment true --amp true   # T-Rex2 v2
    (zero-shot RegionCLIP detector: teacher + RPN; T-Rex2 detector: its own boxes)
    regionprompt eval-detector --mode text                            # on a 100-image test build
                                                                      # per candidate; the best AP50 is kept

Without committed weights (``teacher_weights=None``, ``rpn_weights=None``; the fast test profile) the
teacher and the RPN are trained first::

    regionprompt train clip --text clip --layout iconic --image-size 64 --steps 400 --batch-size 128 \
        --warmup-steps 30 --concept-negatives 256 --checkpoint-every 50  # teacher
    regionprompt train rpn --steps 1000 --batch-size 8                # proposals
    regionprompt pseudo-label ... ; regionprompt train regions ...    # optional student (``student=True``)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from regionprompt.detect.regionclip.zeroshot import ZeroShotConfig
from regionprompt.detect.trex2_engine import TRex2DetectConfig
from regionprompt.errors import RegionPromptError
from regionprompt.regionclip.pseudo_labels import PseudoLabelConfig
from regionprompt.train.clip_pretrain import ClipPretrainConfig
from regionprompt.train.ov_transfer import RegionClipTransferConfig
from regionprompt.train.regions import RegionPretrainConfig
from regionprompt.train.rpn import RpnTrainConfig
from regionprompt.train.trex2 import TRex2TrainConfig
from regionprompt.vl.cards import load_card

PROFILES = ("default", "fast")

#: The teacher: iconic 64 px images (1-3 large objects each) make caption pretraining affordable on a CPU.
TEACHER = ClipPretrainConfig(card="RN-tiny", text="clip", layout="iconic", image_size=64, steps=400, batch_size=128,
                             warmup_steps=30, concept_negatives=256, checkpoint_every=50)
RPN = RpnTrainConfig(steps=1000, batch_size=8)
# 100 proposals: recall@0.5 83.5 % against 92.9 % at 300 (docs/results.md), for a third of the time per
# image; region embedding, not the RPN, is what a CPU pays for. Input 224: with ground-truth boxes on 60
# test images the iconic-64 teacher's AP50 over 1,177 names was 0.9 / 0.9 / 1.6 / 1.9 / 1.5 / 1.6 % at
# 64 / 128 / 160 / 224 / 320 / 448 px (all near the floor; 224 the best of them).
DETECTOR = ZeroShotConfig(max_proposals=100, input_size=224)
#: The T-Rex2 candidate (v2 recipe): 320 px det-train scenes (the RPN's cache), backbone and frozen text side
#: from the teacher (``clip`` is replaced by the teacher's model folder when the pipeline runs): half the
#: iterations text prompts scored against every base name, paired scenes so that exemplars are drawn on
#: other images (one source image or the mean of several), absent names as negatives of visual prompts,
#: appearance augmentation, bfloat16 autocast. 4000 steps: ~100-140 min with one thread (docs/results.md).
TREX2 = TRex2TrainConfig(steps=4000, batch_size=4, cycle="tbtp", extra_negatives=1000, paired_batches=True,
                         cross_image_prob=0.5, exemplar_mean_prob=0.2, visual_text_negatives=128, augment=True,
                         amp=True, checkpoint_every=500)
#: Committed stage weights (``weights/``, see its README) the default recipe starts from: the GPU-trained
#: RegionCLIP student of teacher8 (RN-tiny image tower, frozen MiniLM text side) and the RPN.
STUDENT8 = "weights/student8-minilm"
COMMITTED_RPN = "weights/rpn"
TREX2_DETECT = TRex2DetectConfig()
#: The region namer's fine-tune: RegionCLIP's transfer on det-train base boxes at the namer's 224 px input,
#: foreground RoIs only (ground truth + RPN boxes at IoU >= 0.5, no background term: T-Rex2's objectness
#: decides what is an object, the namer only names it). Its tower is then mixed with the starting one
#: (``namer_mix``, WiSE-FT) so the novel names the start knew are kept.
NAMER_TUNING = RegionClipTransferConfig(image_size=224, rpn_proposals=50, rois_per_image=16, fg_fraction=1.0,
                                        background_weight=0.0, steps=1500, warmup_steps=100, lr=1e-4,
                                        checkpoint_every=250)
NAMER_MIX = 0.7
#: Where the namer's tuning stops on its 1,500-step schedule: a time box (the run shares a 2-core CPU);
#: ``None`` runs the whole schedule. A later run with a larger value resumes from the checkpoint.
NAMER_STOP_STEP = 750


@dataclass(frozen=True)
class DefaultPipelineConfig:
    """Everything ``regionprompt train default`` does (recorded in the model card).

    The stage configs are those of the stage trainers; ``student`` switches the optional RegionCLIP
    student (pseudo labels + region-text pretraining) on and ``trex2`` the T-Rex2 detector (``None``:
    off); of every detector built, the best by AP50 on the evaluation build is kept.

    ``trex2.clip`` is not used as given: the pipeline trains T-Rex2 on the teacher's model folder
    (``OUT/teacher/model``: backbone and frozen text side), and the T-Rex2 stage's settings key holds
    the teacher's weights hash in its place, so a moved run folder or another path spelling does not
    retrain it while a new teacher does.
    """

    profile: str = "default"  # "default" or "fast" (tiny, for tests); recorded, not interpreted
    teacher_weights: str | None = None  # a committed CLIP model folder used instead of training the teacher
    rpn_weights: str | None = None  # a committed proposal-network folder used instead of training the RPN
    teacher: ClipPretrainConfig = TEACHER
    rpn: RpnTrainConfig = RPN
    detector: ZeroShotConfig = DETECTOR
    student: bool = False  # also train the RegionCLIP student and keep the better detector
    pseudo_label_scenes: int = 2000  # pretrain scenes (scene layout) pseudo-labelled for the student
    pseudo_label_size: int = 320  # their side in pixels (the RPN's and the teacher's input)
    pseudo_label_seed: int = 0  # EmojiWorld seed of those scenes
    pseudo_label_pool: str = "teacher"  # "teacher": the teacher's caption-concept pool; "emojiworld" (oracle) or a pool file
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    regions: RegionPretrainConfig = field(default_factory=RegionPretrainConfig)
    trex2: TRex2TrainConfig | None = TREX2  # the T-Rex2 candidate; None: RegionCLIP detectors only
    trex2_detect: TRex2DetectConfig = TREX2_DETECT  # how its query scores become detections
    trex2_namer: bool = False  # the teacher's region encoder names T-Rex2's boxes for text prompts (region_namer)
    namer_tuning: RegionClipTransferConfig | None = None  # fine-tune the namer on base boxes first (None: the teacher as is)
    namer_mix: float = 1.0  # weight of the fine-tuned image tower in the namer (1 - it: the teacher's)
    namer_stop_step: int | None = None  # stop the namer's tuning at this step of its schedule (None: run it all)
    eval_images: int = 100  # EmojiWorld test images of the evaluation build
    eval_seed: int = 1  # its world seed
    eval_max_detections: int = 100  # detections per image (and COCO maxDets)
    eval_batch_size: int = 4  # images per predict call during evaluation
    workers: int = 2  # processes rendering scenes

    def __post_init__(self) -> None:
        problems = []
        if self.profile not in PROFILES:
            problems.append(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        for name in ("pseudo_label_scenes", "eval_images", "eval_max_detections", "eval_batch_size", "workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.pseudo_label_size < 32 or self.pseudo_label_size % 32:
            problems.append(f"pseudo label size must be a multiple of 32, got {self.pseudo_label_size}")
        if not 0.0 <= self.namer_mix <= 1.0:
            problems.append(f"namer mix must lie in [0, 1], got {self.namer_mix}")
        if self.namer_stop_step is not None and not (
                self.namer_tuning is not None and 1 <= self.namer_stop_step <= self.namer_tuning.steps):
            problems.append(f"namer stop step must lie in [1, namer tuning steps], got {self.namer_stop_step}")
        if self.namer_tuning is not None and not (self.trex2_namer and self.trex2 is not None):
            problems.append("namer tuning needs the T-Rex2 stage and trex2_namer")
        if self.teacher.image_size is None:
            problems.append("the teacher recipe needs an explicit image_size (its scene cache is rendered at that size)")
        if self.trex2 is not None and _vision_kind(self.teacher.card) not in ("resnet", None):
            # T-Rex2 reads the res3-res5 maps of the teacher's image tower.
            problems.append(f"the T-Rex2 stage needs a ResNet teacher card, got {self.teacher.card!r}; set trex2=None")
        if problems:
            raise RegionPromptError("invalid default-model recipe: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (tuples become lists)."""
        data = asdict(self)
        data["detector"] = self.detector.to_dict()
        data["trex2_detect"] = self.trex2_detect.to_dict()
        return data


def _vision_kind(card: str) -> str | None:
    """``"resnet"`` / ``"vit"`` of a card name or path; ``None`` when it cannot be read here (the teacher
    stage reports that)."""
    try:
        return load_card(card).vision.kind
    except RegionPromptError:
        return None


def default_profile() -> DefaultPipelineConfig:
    """The recipe of the shipped model: committed teacher (student8) and RPN weights, then T-Rex2 v2."""
    return DefaultPipelineConfig(teacher_weights=STUDENT8, rpn_weights=COMMITTED_RPN, trex2_namer=True,
                                 namer_tuning=NAMER_TUNING, namer_mix=NAMER_MIX, namer_stop_step=NAMER_STOP_STEP)


def fast_profile() -> DefaultPipelineConfig:
    """Every stage for real, at toy size: tiny scene counts, a few steps, 4 evaluation images (tests, smoke runs)."""
    return DefaultPipelineConfig(
        profile="fast",
        teacher=replace(TEACHER, num_scenes=16, steps=6, batch_size=8, warmup_steps=2, lr=3e-3, checkpoint_every=5,
                        concept_min_count=2, concept_negatives=32),
        rpn=replace(RPN, image_size=96, width=8, fpn_channels=16, num_scenes=16, batch_size=4, steps=6, warmup_steps=2,
                    lr=3e-3, checkpoint_every=5),
        detector=ZeroShotConfig(max_proposals=20, input_size=96, templates="single"),
        pseudo_label_scenes=8,
        pseudo_label_size=96,
        pseudo_labels=PseudoLabelConfig(max_proposals=10, top_k=3, templates="single", shard_images=4),
        regions=RegionPretrainConfig(steps=4, batch_size=4, regions_per_image=3, warmup_steps=2, checkpoint_every=4),
        # 8 scenes at 64 px, batch 2: 4 batches per epoch; one template keeps the 1,177-name evaluation short.
        trex2=replace(TREX2, amp=False, paired_batches=False, extra_negatives=8, visual_text_negatives=0,
                      augment=False, cross_image_prob=0.0, exemplar_mean_prob=0.0, cycle="tbbpp", image_size=64, dim=32, heads=2, points=2, encoder_layers=1, decoder_layers=2,
                      prompt_layers=2, ffn_dim=64, num_queries=12, templates="single", num_scenes=8, batch_size=2,
                      steps=6, warmup_steps=2, text_warmup_steps=2, dn_queries=12, checkpoint_every=5),
        trex2_detect=TRex2DetectConfig(batch_size=2),
        eval_images=4,
        eval_batch_size=2,
        workers=1,
    )


def profile(name: str) -> DefaultPipelineConfig:
    if name not in PROFILES:
        raise RegionPromptError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return fast_profile() if name == "fast" else default_profile()


__all__ = ["COMMITTED_RPN", "DETECTOR", "NAMER_MIX", "NAMER_STOP_STEP", "NAMER_TUNING", "STUDENT8", "PROFILES", "RPN", "TEACHER", "TREX2", "TREX2_DETECT", "DefaultPipelineConfig", "default_profile", "fast_profile", "profile"]
