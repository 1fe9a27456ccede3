"""Typed configuration: YAML files plus dotted ``KEY=VALUE`` overrides.

Every key lives in one of the dataclasses below, with its type, default and a one-line help
text. Loading rejects unknown keys (with close matches) and values of the wrong type before
any work starts. ``docs/config.md`` is generated from these classes (``longtail config --keys``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import reprlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from longtail.errors import LongtailError, file_problem

Stage2Method = Literal["joint", "ncm_cosine", "ncm_euclidean", "crt", "tau_norm", "lws",
                       "logit_adjust", "balms", "las", "wb", "finetune", "finetune_last"]
STAGE2_METHODS: tuple[str, ...] = typing.get_args(Stage2Method)
# model.name: longtail's own backbones (models/backbones.py; kept here so that a config is
# checked without importing torch), or "timm/<name>" for any timm model.
BACKBONE_NAMES = ("resnet10", "resnet18", "resnet50", "resnet101", "resnet152",
                  "resnext50_32x4d", "resnext101_32x4d", "resnext152_32x4d", "resnet32_cifar")
TIMM_PREFIX = "timm/"
TIMM_MISSING = ("config key model.name: timm/ models need the timm package; pip install timm "
                "(in longtail's repository: pip install '.[timm]')")
# The paper's methods, run by default.
DEFAULT_METHODS: tuple[str, ...] = STAGE2_METHODS[:6]
# stage2.methods: all -> every method on cached features (fine-tuning re-trains the network).
FEATURE_METHODS: tuple[str, ...] = STAGE2_METHODS[:10]
# Methods that train on features with a sampler: they can also run online (stage2.features).
TRAINED_METHODS: tuple[str, ...] = ("crt", "lws", "balms", "las", "wb")
# Keys that say where a run executes, not what it computes: a resumed run may change them.
PLACE_KEYS: tuple[str, ...] = ("device", "data.root", "data.num_workers")
# Methods that re-train the network itself.
FINETUNE_METHODS: tuple[str, ...] = STAGE2_METHODS[10:]
Loss = Literal["ce", "logit_adjusted", "balanced_softmax"]
LOSSES: tuple[str, ...] = typing.get_args(Loss)


SAMPLER_PRESETS = {"instance": 1.0, "class": 0.0, "sqrt": 0.5}
SAMPLER_NAMES = (*SAMPLER_PRESETS, "progressive", "class_aware")


def parse_sampler_spec(spec: str | float) -> str | float:
    """Return a checked sampler spec: a preset or special name, or q as a float in [0, 1].

    Raises ValueError with a readable message otherwise.
    """
    if isinstance(spec, bool):
        raise ValueError(f"expected one of {', '.join(SAMPLER_NAMES)} or q in [0, 1], found {spec}")
    if isinstance(spec, (int, float)):
        if not 0.0 <= float(spec) <= 1.0:
            raise ValueError(f"expected q in [0, 1], found {spec}")
        return float(spec)
    if spec in SAMPLER_NAMES:
        return spec
    try:
        return parse_sampler_spec(float(spec))
    except ValueError:
        pass
    raise ValueError(f"expected one of {', '.join(SAMPLER_NAMES)} or q in [0, 1], found {spec!r}")


class ConfigError(LongtailError):
    """A config key is unknown, mistyped or out of range."""


def _opt(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    kind: Literal["fmnist_lt", "cifar10_lt", "cifar100_lt", "list", "inat_json",
                  "image_folder", "features"] = _opt(
        "fmnist_lt", "dataset reader: fmnist_lt, cifar10_lt, cifar100_lt (long-tailed from "
        "balanced data), list (split lists), inat_json (iNaturalist JSON), image_folder, "
        "features (feature files: no stage 1, docs/features.md)"
    )
    root: str | None = _opt(
        None, "dataset folder; fmnist_lt default /usr/share/datasets/fashion-mnist; features: "
        "optional folder of the files"
    )
    train: str | None = _opt(
        None, "train split: list file (list), JSON file (inat_json), sub-folder (image_folder) "
        "or .npz / .pt / .safetensors file (features)"
    )
    val: str | None = _opt(None, "val split, as data.train (balanced; tau-norm chooses tau on it)")
    test: str | None = _opt(None, "test split, as data.train")
    class_names: str | None = _opt(
        None, "list: text file of class names ('name' per line, or 'label name')"
    )
    profile: Literal["exponential", "step", "pareto"] = _opt(
        "exponential", "long-tail profile of generated splits (fmnist_lt, cifar*_lt, "
        "image_folder without data.train); step: CIFAR only"
    )
    n_max: int | None = _opt(
        None, "generated splits: images of the largest class; null: 1280 (fmnist_lt), all "
        "(cifar), the smallest class's (image_folder)"
    )
    n_min: int | None = _opt(
        None, "generated splits: images of the smallest class; null: n_max / imbalance_ratio, "
        "or 5 (fmnist_lt)"
    )
    imbalance_ratio: float | None = _opt(
        None, "generated splits: n_max / n_min, e.g. 10, 50, 100, 200 (not with n_min); null: 100 "
        "(cifar)"
    )
    pareto_alpha: float = _opt(6.0, "profile pareto: shape parameter (ImageNet-LT: 6)")
    class_order: Literal["random", "label"] = _opt(
        "random", "generated splits (not cifar): which class gets which size; random: by seed"
    )
    val_per_class: int = _opt(
        20, "generated splits: balanced val images per class, from images the train split "
        "does not use"
    )
    test_per_class: int = _opt(50, "image_folder without data.test: test images per class")
    val_from_train: int | None = _opt(
        None, "list, inat_json, image_folder, features without data.val: hold out this many "
        "training images (rows) per class as val; null: 0, but 1 for features (tau-norm "
        "chooses tau on val)"
    )
    split_seed: int | None = _opt(None, "seed of generated splits; null: the run's seed")
    remap_labels: bool = _opt(
        False, "list, image_folder: map the training labels found to 0..C-1 (printed) "
        "instead of stopping when they are not 0..C-1"
    )
    allow_outside_root: bool = _opt(
        False, "let list-file paths point outside data.root (e.g. '../x.jpg' or '/abs.jpg')"
    )
    on_bad_image: Literal["error", "skip"] = _opt(
        "error", "an image that cannot be decoded: stop with its file and line, or skip it "
        "and count it"
    )
    download: bool = _opt(False, "fmnist_lt: download the IDX files into root when missing")
    image_size: int | None = _opt(
        None, "input side; null: 28 (fmnist), 32 (cifar), else the median longer side of 25 "
        "training images if < 64, else 224"
    )
    hflip: bool | None = _opt(
        None, "random horizontal flips in training; null: on for inputs (data.image_size) of 64 "
        "px and more (the paper's), off for smaller ones, where mirrored characters or icons "
        "change class (docs/results.md)"
    )
    mean: list[float] | None = _opt(
        None, "normalisation mean per channel; null: the dataset's (Fashion-MNIST, CIFAR), "
        "ImageNet's for image files (its channel average for one channel)")
    std: list[float] | None = _opt(
        None, "normalisation std per channel; null: as data.mean")
    in_memory: bool | Literal["auto"] = _opt(
        "auto", "decode images once and keep them as tensors (auto: when under 2 GiB)"
    )
    num_workers: int | None = _opt(
        None, "DataLoader workers; null: min(8, cpus), but 0 for images held in memory, except "
              "images of 64 px or more on a GPU")


@dataclass
class ModelConfig:
    name: str = _opt(
        "resnet10", "backbone: resnet10/18/50/101/152, resnext50/101/152_32x4d (torchvision's "
        "ResNet class), resnet32_cifar, or timm/NAME for any timm model (pip install "
        "'.[timm]'; docs/backbones.md)"
    )
    width: int = _opt(64, "channels of the first stage (64 is torchvision's; features scale); "
                          "resnet32_cifar and timm/ models have their own")
    in_channels: int | None = _opt(None, "image channels; null: 1 for fmnist_lt, 3 otherwise")
    small_stem: bool | None = _opt(
        None, "3x3 stride-1 stem without max-pool; null: only for images under 16 px (at 28 "
        "and 32 px torchvision's stem measured as accurate at a fraction of the compute: "
        "docs/results.md)"
    )
    weights: str | None = _opt(
        None, "initial weights: a local state dict or torchvision checkpoint (timm/ models: "
        "also timm's .pth / .safetensors files; loaded with weights_only); a classifier of "
        "another class count is left out"
    )
    pretrained: bool = _opt(
        False, "timm/ models: timm's own pretrained weights, downloaded (or from the Hugging "
        "Face cache); without network, download them elsewhere and use model.weights"
    )
    trainable: list[str] | None = _opt(
        None, "modules trained in stage 1, e.g. [layer4, fc]; the rest is frozen (BatchNorm "
        "statistics included); null: all"
    )


def steps_batch(batch_size: int, rows: int, min_steps: int) -> int:
    """Return ``batch_size``, shrunk so that ``rows`` make ``min_steps`` steps, but at least
    2 rows a step (BatchNorm in training refuses one)."""
    return min(batch_size, max(2, rows // min_steps))


@dataclass
class Stage1Config:
    epochs: int = _opt(90, "epochs of joint training")
    batch_size: int = _opt(512, "images per step, all processes together (split evenly)")
    lr: float | None = _opt(
        None, "learning rate of SGD; null: base_lr scaled linearly by the global batch size"
    )
    base_lr: float = _opt(0.1, "learning rate at base_batch_size images per step (lr: null)")
    base_batch_size: int = _opt(256, "the batch size base_lr belongs to")
    classifier_lr: float | None = _opt(None, "learning rate of the classifier; null: lr")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "SGD weight decay")
    warmup_epochs: int = _opt(0, "epochs of linear learning-rate warm-up before the cosine")
    sampler: str | float = _opt(
        "instance", "instance, class, sqrt, progressive, class_aware, or q in [0, 1]"
    )
    samples_per_class: int = _opt(4, "class_aware sampler: consecutive images per class")
    min_steps: int = _opt(
        16, "steps an epoch takes at least: a batch_size above training images / min_steps "
        "shrinks to that (small datasets: one step an epoch barely trains; docs/results.md); "
        "1: batch_size as given")
    amp: bool = _opt(True, "bfloat16 autocast on CUDA (ignored on other devices and on GPUs "
                           "without native bfloat16, before Ampere)")
    compile: bool = _opt(False, "train through torch.compile (bench/gpu_check.py measures it)")
    eval_every: int = _opt(1, "val top-1 every N epochs (and after the last); 0: only after the "
                              "last. select=best_val chooses among the epochs evaluated")
    loss: Loss = _opt(
        "ce", "ce; logit_adjusted: softmax of logits + loss_tau * log prior in training, plain "
        "logits at test (Menon et al. 2021); balanced_softmax: + log n_y (Ren et al. 2020)"
    )
    loss_tau: float = _opt(1.0, "loss=logit_adjusted: the tau of tau * log prior")
    mixup_alpha: float = _opt(
        0.0, "mixup of image pairs with weight ~ Beta(alpha, alpha) (MiSLAS: 0.2); 0: off"
    )
    lr_schedule: Literal["cosine", "cosine_epoch"] = _opt(
        "cosine",
        "cosine: per step down to 0; cosine_epoch: the authors' per-epoch steps, last epoch lr 0",
    )
    select: Literal["last", "best_val"] = _opt(
        "last", "weights stage 2 starts from: the last epoch's, or the epoch with the best val "
        "top-1 (the authors' choice; stage1/best.pt)"
    )

    def real_batch_size(self, train_size: int, world: int = 1) -> int:
        """Return the global batch training really takes: ``batch_size``, but small enough for
        ``min_steps`` steps an epoch, as one process would take it (so 1 and N processes
        train with the same batch), then a multiple of the ``world`` processes (at least 2
        images each, for BatchNorm)."""
        batch = steps_batch(self.batch_size, train_size, self.min_steps)
        return max(2 * world, batch // world * world)

    def resolved_lr(self, batch_size: int | None = None) -> float:
        """Return ``lr``, or ``base_lr`` scaled linearly to the global batch size: the one
        training really takes (``real_batch_size``) when given, else ``batch_size``."""
        if self.lr is not None:
            return self.lr
        return self.base_lr * (batch_size or self.batch_size) / self.base_batch_size


@dataclass
class CRTConfig:
    """cRT's settings, which balms and las take too."""

    epochs: int = _opt(10, "epochs of classifier re-training (crt; balms and las take it too)")
    lr: float = _opt(0.2, "initial learning rate, cosine to 0 (crt, las; balms when "
                          "stage2.balms.lr is null)")
    weight_decay: float = _opt(5e-4, "weight decay of the new classifier (crt, balms, las)")
    sampler: str | float = _opt("class", "sampler over training features, see stage1.sampler "
                                         "(crt, las; balms draws instances)")
    loss: Loss = _opt("ce", "loss of the new classifier (see stage1.loss)")
    loss_tau: float = _opt(1.0, "loss=logit_adjusted: the tau of tau * log prior")
    label_smoothing: Literal["none", "las"] = _opt(
        "none", "las: MiSLAS's label-aware smoothing, las_head for the largest class down to "
        "las_tail for the smallest"
    )
    las_head: float = _opt(0.3, "label smoothing of the largest class (crt with las, and las)")
    las_tail: float = _opt(0.0, "label smoothing of the smallest class (crt with las, and las)")


@dataclass
class BALMSConfig:
    lr: float | None = _opt(
        None, "initial learning rate of balms (cosine to 0); null: stage2.crt.lr. Instance "
        "draws show a tail class rarely: on small data it needs a larger rate than cRT")


@dataclass
class WBConfig:
    epochs: int = _opt(10, "epochs of weight balancing's classifier training")
    lr: float = _opt(0.02, "initial learning rate (cosine to 0)")
    weight_decay: float = _opt(5e-3, "weight decay of the classifier")
    max_norm: float | None = _opt(
        None, "MaxNorm radius: no class weight vector longer than this after a step; null: "
        "the mean norm of the joint classifier's"
    )
    beta: float = _opt(0.9999, "class-balanced loss weights (1 - beta) / (1 - beta^n_y)")
    sampler: str | float = _opt("instance", "sampler over training features (see "
                                            "stage1.sampler)")


@dataclass
class LWSConfig:
    epochs: int = _opt(5, "epochs of learnable weight scaling")
    lr: float = _opt(0.2, "initial learning rate (cosine to 0)")
    weight_decay: float = _opt(0.0, "weight decay on the scales (the authors' code: 5e-4)")
    scale_bias: bool = _opt(False, "scale the bias too, as the authors' code does")
    sampler: str | float = _opt("class", "sampler over training features (see stage1.sampler)")


@dataclass
class TauGridConfig:
    """tau of tau_norm and of logit_adjust: fixed, or chosen on the val split from a grid."""

    tau: float | None = _opt(None, "fixed tau; null: choose on the val split from the grid")
    grid_max: float = _opt(2.0, "largest tau of the grid 0..grid_max")
    grid_step: float = _opt(0.05, "step of the tau grid")


@dataclass
class NCMConfig:
    center: bool = _opt(False, "subtract the mean training feature first (the authors' default)")
    normalize: bool | None = _opt(
        None, "L2-normalise features before averaging; null: for ncm_cosine only"
    )


@dataclass
class FinetuneConfig:
    epochs: int = _opt(10, "epochs of fine-tuning (finetune, finetune_last)")
    lr: float = _opt(0.01, "initial learning rate (cosine to 0)")
    weight_decay: float = _opt(5e-4, "weight decay")
    batch_size: int = _opt(128, "images per step")
    sampler: str | float = _opt("class", "sampler over training images (see stage1.sampler)")


@dataclass
class Stage2Config:
    methods: list[Stage2Method] = _opt(
        list(DEFAULT_METHODS), "re-balancing methods to run, in this order (a list, or names "
        "joined by commas), or all (every method on features); finetune and finetune_last "
        "re-train the network (the paper's comparison), the others work on features"
    )
    batch_size: int = _opt(
        512, "features per step of the trained methods (crt, lws, balms, las, wb)")
    min_steps: int = _opt(
        16, "steps an epoch of a trained method takes at least: a batch size above training "
        "rows / min_steps shrinks to that; 1: as given")
    momentum: float = _opt(0.9, "SGD momentum of the trained methods")
    samples_per_class: int = _opt(
        4, "trained methods with the class_aware sampler: images per pick")
    select: Literal["last", "best_val"] = _opt(
        "last", "trained methods: keep the last epoch's classifier, or the epoch with the best "
        "val top-1 (the authors' choice)"
    )
    features: Literal["cached", "online"] = _opt(
        "cached", "trained methods: train on the cached test-transform features, or run the frozen "
        "backbone every epoch on augmented training images (the authors' way, slower)"
    )
    bn: Literal["eval", "train"] = _opt(
        "eval", "features=online: backbone BatchNorm in eval mode, or in train mode so its "
        "statistics drift under class-balanced batches (the authors' code)"
    )
    crt: CRTConfig = field(default_factory=CRTConfig)
    lws: LWSConfig = field(default_factory=LWSConfig)
    tau_norm: TauGridConfig = field(default_factory=TauGridConfig)
    logit_adjust: TauGridConfig = field(default_factory=TauGridConfig)
    wb: WBConfig = field(default_factory=WBConfig)
    balms: BALMSConfig = field(default_factory=BALMSConfig)
    ncm: NCMConfig = field(default_factory=NCMConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def real_batch_size(self, train_size: int) -> int:
        """Return the batch the trained methods really take on ``train_size`` rows:
        ``batch_size``, but small enough for ``min_steps`` steps an epoch."""
        return steps_batch(self.batch_size, train_size, self.min_steps)


# The stage2.* sections (or single keys) each method's result depends on; balms and las take
# some of cRT's settings (stages/rebalance.py, build_rebalancer).
_CRT_SHARED = ("crt.epochs", "crt.lr", "crt.weight_decay")
_METHOD_SECTIONS = {"joint": (), "ncm_cosine": ("ncm",), "ncm_euclidean": ("ncm",),
                    "crt": ("crt",), "tau_norm": ("tau_norm",), "lws": ("lws",),
                    "logit_adjust": ("logit_adjust",), "balms": (*_CRT_SHARED, "balms"),
                    "las": (*_CRT_SHARED, "crt.sampler", "crt.las_head", "crt.las_tail"),
                    "wb": ("wb",), "finetune": ("finetune",), "finetune_last": ("finetune",)}
# The section whose sampler each stage-2 method that trains with one draws by (las: cRT's).
_SAMPLER_SECTIONS = {"crt": "crt", "las": "crt", "lws": "lws", "wb": "wb",
                     "finetune": "finetune", "finetune_last": "finetune"}


def stage2_sampler(stage2: Stage2Config, method: str) -> str | float | None:
    """Return the sampler stage-2 ``method`` trains with, None for one that draws by none of
    the stage2.*.sampler keys."""
    section = _SAMPLER_SECTIONS.get(method)
    return None if section is None else getattr(stage2, section).sampler


# ... and the keys shared by the methods that train with a sampler (fine-tuning: some).
_TRAINED_KEYS = ("batch_size", "min_steps", "momentum", "samples_per_class", "select",
                 "features", "bn")
_FINETUNE_KEYS = ("momentum", "samples_per_class", "select")


def method_settings(name: str, stage2: Stage2Config) -> dict[str, Any]:
    """Return the ``stage2.*`` settings (dotted key -> value) that the result of method
    ``name`` depends on: a change of any other key leaves it as it is."""
    shared = (_TRAINED_KEYS if name in TRAINED_METHODS
              else _FINETUNE_KEYS if name in FINETUNE_METHODS else ())
    # min_steps 1 (the batch as given) is what runs made before the key existed did: left
    # out, so that their caches still match
    out = {f"stage2.{k}": getattr(stage2, k) for k in shared
           if not (k == "min_steps" and stage2.min_steps == 1)}
    for part in _METHOD_SECTIONS[name]:
        section, _, key = part.partition(".")
        values = dataclasses.asdict(getattr(stage2, section))
        out.update({f"stage2.{section}.{k}": v for k, v in values.items() if k == key or not key})
    if name == "balms":  # one learning rate: its own, else cRT's (as before the key existed)
        del out["stage2.crt.lr" if stage2.balms.lr is not None else "stage2.balms.lr"]
    return out


@dataclass
class EvalConfig:
    many_threshold: int = _opt(100, "Many-shot: classes with more training images than this")
    few_threshold: int = _opt(20, "Few-shot: classes with fewer training images than this")
    batch_size: int = _opt(512, "images per step when extracting features")


@dataclass
class Config:
    seed: int = _opt(0, "seed of every random choice (split, init, sampling, augmentation)")
    device: str = _opt("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Loading and validation


# A config is a few kB; the largest bundled one is under 2 kB.
MAX_CONFIG_BYTES = 256 * 1024


def load_config(path: str | Path | None, overrides: list[str] = (),
                new_run: bool = False, finished: bool = False,
                template: bool = False, run: bool = False) -> Config:
    """Return the config of YAML file ``path`` (or the defaults) with ``KEY=VALUE`` overrides;
    ``new_run``: also check that the files a new run reads first (model.weights) exist;
    ``finished``: a finished run's config.yaml, only read (summarize), so taken as it ran,
    without the checks on settings (a run of an earlier version may not pass today's);
    ``template``: a config to write out and edit (``longtail config``), whose paths to the
    user's data and weights may still be empty; ``run``: a run's own config.yaml, whose keys
    added since it was written take the value that repeats what that run did."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        problem = file_problem(path)
        if problem:
            raise ConfigError(f"{path}: config file {problem}")
        if path.stat().st_size > MAX_CONFIG_BYTES:  # a data file named by mistake: YAML
            # would take seconds to minutes to parse it before its first key was refused
            raise ConfigError(f"{path}: {path.stat().st_size / 2**20:.1f} MB, too large for a "
                              f"config file (at most {MAX_CONFIG_BYTES // 1024} kB of YAML); "
                              f"is it a data file? CONFIG comes first, e.g. longtail run "
                              f"configs/fmnist_lt.yaml")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raw = path.read_bytes()
            line = raw.count(b"\n", 0, e.start) + 1
            utf16 = raw.startswith((b"\xff\xfe", b"\xfe\xff")) or \
                raw[:200].count(b"\x00") * 3 >= len(raw[:200])
            raise ConfigError(f"{path}:{line}: " + (
                "looks like UTF-16 text; save the file as UTF-8" if utf16 else
                f"not UTF-8 text (byte 0x{raw[e.start]:02x})")) from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
        try:
            if _nested_too_deeply(text):
                raise RecursionError
            loaded = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.reader.ReaderError as e:  # a control character: it has no line mark
            line = text.count("\n", 0, e.position) + 1
            damaged = ", as a file damaged in a crash does" if e.character == 0 else ""
            raise ConfigError(f"{path}:{line}: not valid YAML (holds the control character "
                              f"0x{e.character:02x}{damaged})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        except RecursionError:  # lists nested thousands deep: no config is
            raise ConfigError(f"{path}: not valid YAML for longtail (nested too deeply)") from None
        if loaded is None:
            raise ConfigError(f"{path}: the config file is empty; expected a mapping of keys "
                              f"such as 'data:' and 'stage1:' ('longtail config fmnist_lt > "
                              f"my.yaml' writes a complete one)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys, found {type(loaded).__name__}")
        raw = loaded
    if run:  # a run written before min_steps existed took its batches as given
        for section in ("stage1", "stage2"):
            if isinstance(raw.get(section, {}), dict):
                raw.setdefault(section, {}).setdefault("min_steps", 1)
    for item in overrides:
        key = override_key(item)
        value = _parse_value(item.partition("=")[2], _TEXT_KEYS.get(key, False))
        if value is None and key in _SECTIONS:  # would reset the file's section
            raise ConfigError(f"override {item!r}: {key} is a section; set its keys, "
                              f"e.g. {key}.{_SECTIONS[key]}=VALUE")
        _set_dotted(raw, key, value)
    try:
        cfg = _build(Config, raw, "")
        _resolve_defaults(cfg)
        if not finished:
            _check_semantics(cfg, template)
    except ConfigError as e:
        if path is None:
            raise
        # a key the file gives (not an override): its file and line, else the file when
        # every value came from it
        named = re.search(r"config key ([\w.]+)", str(e))
        lines = _key_lines(text)
        given = {override_key(o) for o in overrides}  # a key, or its section as a mapping
        # an override's key as a whole ('seed-x', not the file's 'seed' it starts with)
        overridden = any(re.search(rf"config key {re.escape(k)}(?![\w.])", str(e))
                         for k in given)
        if named and named[1] in lines and not overridden and not any(
                named[1] == k or named[1].startswith(k + ".") for k in given):
            raise ConfigError(f"{path}:{lines[named[1]]}: {e}") from None
        if not overrides:
            raise ConfigError(f"{path}: {e}") from None
        raise
    if new_run:  # not for a finished run's config.yaml: summarize needs no weights file
        _check_files(cfg)
    return _cap_epochs(cfg)


def _key_lines(text: str) -> dict[str, int]:
    """Return the line (1-based) of each dotted key a YAML config text gives."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines.setdefault(prefix + str(key.value), key.start_mark.line + 1)
                    walk(value, f"{prefix}{key.value}.")

    walk(yaml.compose(text, Loader=_Loader), "")
    return lines


def override_key(item: str) -> str:
    """Return the key of a KEY=VALUE override (dotted, without spaces around it); ConfigError
    for another shape."""
    key, sep, _ = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. stage1.epochs=10")
    if not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected a dotted key without empty parts, "
                          f"e.g. stage1.epochs=10, found key {key.strip()!r}")
    return key.strip()


class _Loader(yaml.SafeLoader):
    """safe_load, but numbers as YAML 1.2 (and people) read them: YAML 1.1's base 60
    (``1:00`` is 60) stays text, to be refused as such, and a leading zero is decimal
    (``010`` is 10, not octal 8); 0x10, 0o10 and 1_000 keep their meaning."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        text = self.construct_scalar(node)
        if ":" in text:
            return text
        digits = text.replace("_", "").lstrip("+-")
        if len(digits) > 1000:  # int() refuses past 4300 digits (a traceback): left as text,
            return text  # which the key's check refuses, shortened
        if len(digits) > 1 and digits[0] == "0" and digits.isdigit():
            return int(text.replace("_", ""), 10)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        text = self.construct_scalar(node)
        return text if ":" in text else super().construct_yaml_float(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
# YAML 1.1 reads 010 as an (octal) int but 08 and 09 as text: both are decimal ints here
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?0[0-9_]+$"),
                              list("-+0"))
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


class _UniqueKeyLoader(_Loader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps the last silently,
    so a second ``kind:`` would override the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys given below win
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict, set)):  # `? [a, b]`: no config key is one
                raise yaml.constructor.ConstructorError(
                    None, None, f"expected a plain key, found a {type(key).__name__}",
                    key_node.start_mark)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _check_files(cfg: Config) -> None:
    """Check what a new run reads besides the data (which the readers check) up front, before
    any data is scanned: the initial weights."""
    weights = cfg.model.weights
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            raise ConfigError(f"config key model.weights: {weights} is a folder; expected a "
                              f"file of weights (a state dict or checkpoint)")
        problem = file_problem(path)
        if problem:
            raise ConfigError(f"config key model.weights: file not found: {weights}"
                              if problem == "not found" else
                              f"config key model.weights: {weights} {problem}")
        from longtail.checkpoint import torch_file_problem

        problem = torch_file_problem(path)
        if problem:  # empty, text, an .npz: said before the data is read
            raise ConfigError(f"config key model.weights: {problem}")


# The keys that name files or folders (checked non-empty, ~ expanded).
PATH_KEYS = ("data.root", "data.train", "data.val", "data.test", "data.class_names",
             "model.weights")


def rebase_paths(cfg: Config, origin: str | Path) -> Config:
    """Return a copy of ``cfg`` with its relative paths taken from directory ``origin`` (where
    the run started) instead of the working directory, each where it is found from there (a
    file key also beside the rebased data.root); one not found there (the project folder
    moved) is left as it was, relative to the working directory."""
    origin, cfg = Path(origin), dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data), model=dataclasses.replace(cfg.model))
    root = cfg.data.root
    if root and not Path(root).is_absolute() and (origin / root).exists():
        cfg.data.root = root = str(origin / root)
    for key in PATH_KEYS:
        value = get_key(cfg, key)
        if key == "data.root" or not value or Path(value).is_absolute():
            continue
        for candidate in (origin / value, *([Path(root) / value] if root else [])):
            if candidate.exists():
                section, name = key.split(".")
                setattr(getattr(cfg, section), name, str(candidate))
                break
    return cfg


def _resolve_defaults(cfg: Config) -> None:
    """Fill in defaults that depend on other keys, so that config.yaml records the value used."""
    d = cfg.data
    # A shell leaves the ~ of `data.root=~/data` as it is; config.yaml records the expansion.
    for key in PATH_KEYS:
        value = get_key(cfg, key)
        if isinstance(value, str) and value.startswith("~"):
            section, name = key.rsplit(".", 1)
            setattr(get_key(cfg, section), name, os.path.expanduser(value))
    if d.val_from_train is None:
        # Feature files often come as train and test only; a val split held out of training
        # lets tau-norm choose tau (one row per class, as the iNaturalist configs do).
        d.val_from_train = 1 if d.kind == "features" and d.val is None else 0


def _cap_epochs(cfg: Config) -> Config:
    """Cap every epoch count at $LONGTAIL_MAX_EPOCHS when it is set: the documented commands
    run as written in the tests, only shorter."""
    cap = os.environ.get("LONGTAIL_MAX_EPOCHS")
    if not cap:
        return cfg
    if not cap.isdigit() or int(cap) < 1:
        raise ConfigError(f"LONGTAIL_MAX_EPOCHS: expected an integer >= 1, found {cap!r}")
    n = int(cap)
    sections = (cfg.stage1, cfg.stage2.crt, cfg.stage2.lws, cfg.stage2.wb, cfg.stage2.finetune)
    global _CAP_NOTED
    if not _CAP_NOTED and any(section.epochs > n for section in sections):  # said once
        _CAP_NOTED = True
        print(f"note: LONGTAIL_MAX_EPOCHS={n} caps every epoch count (a setting for tests)",
              file=sys.stderr)
    for section in sections:
        section.epochs = min(section.epochs, n)
    cfg.stage1.warmup_epochs = min(cfg.stage1.warmup_epochs, max(cfg.stage1.epochs - 1, 0))
    return cfg


_CAP_NOTED = False


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Return a validated Config from a nested dict (as written to a run's config.yaml)."""
    cfg = _build(Config, raw, "")
    _resolve_defaults(cfg)
    _check_semantics(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    """Return the fully resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _nested_too_deeply(text: str, limit: int = 64) -> bool:
    """True when ``[`` and ``{`` nest more than ``limit`` deep (brackets in quotes count too:
    no config comes near): PyYAML's scanner takes time quadratic in the depth (2 s at 500),
    then Python's recursion limit stops it."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _parse_value(text: str, text_key: bool = False) -> Any:
    """Return an override's value as YAML reads it; for a key that holds text (``text_key``),
    YAML's mapping or list is the text itself (``device=cuda:`` is a typo, not a mapping)."""
    try:
        if _nested_too_deeply(text):
            raise RecursionError
        value = yaml.load(text, Loader=_Loader) if text.strip() else ""
    except (yaml.YAMLError, RecursionError):  # text, which the key's check refuses, shortened
        return text
    # (a folder named 2024 is text too; a bool stays a bool, for its type error)
    keep = (dict, list, int, float) if text_key else ()
    return text if keep and isinstance(value, keep) and not isinstance(value, bool) else value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:  # `stage1:` with nothing under it in the file
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    _merge(node, parts[-1], value)


def _merge(node: dict[str, Any], key: str, value: Any) -> None:
    """Set ``node[key] = value``, but merge a mapping into a section key by key: the override
    ``stage1={epochs: 2}`` changes epochs and keeps the file's other stage-1 keys."""
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for k, v in value.items():
            _merge(node[key], k, v)
    else:
        node[key] = value


def _fields(cls: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """Return (dotted name, field, type) of every field, sections and their keys alike."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append((prefix + f.name, f, hints[f.name]))
        if dataclasses.is_dataclass(hints[f.name]):
            out += _fields(hints[f.name], prefix + f.name + ".")
    return out


def _holds_text(tp: Any) -> bool:
    """True for a key whose values are text (str, a Literal of strings, or either or null),
    with no list, section, number or bool among them."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    return any(a is str or typing.get_origin(a) is Literal for a in args) and not any(
        typing.get_origin(a) is list or dataclasses.is_dataclass(a) or a in (int, float, bool)
        for a in args)


def all_keys() -> list[str]:
    """Return every dotted key of the config, sections excluded."""
    return [name for name, _, tp in _fields() if not dataclasses.is_dataclass(tp)]


_TEXT_KEYS = {name: _holds_text(tp) for name, _, tp in _fields()}
# section -> its first key, for examples in messages
_SECTIONS = {name: dataclasses.fields(tp)[0].name for name, _, tp in _fields()
             if dataclasses.is_dataclass(tp)}


def flatten(cfg: Config) -> dict[str, Any]:
    """Return the config as {dotted key: value}."""
    def walk(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
        flat = {}
        for key, value in tree.items():
            flat.update(walk(value, f"{prefix}{key}.") if isinstance(value, dict)
                        else {prefix + key: value})
        return flat

    return walk(cfg.to_dict(), "")


def key_names() -> list[str]:
    """Return every dotted config key and section (data, stage2.crt, ...)."""
    return [name for name, _, _ in _fields()]


def close_keys(key: str) -> list[str]:
    """Return up to 3 config keys or sections close to ``key``: by spelling, then those with
    the same last part (``stage1.epoch`` -> ``stage1.epochs``, ``stage2.wb.epochs``...)."""
    names = key_names()
    if key.lower() in names:  # STAGE1.EPOCHS: keys are lower case
        return [key.lower()]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    close += [n for n in names if n.rsplit(".", 1)[-1] == leaf and n not in close]
    return close[:3]


def _unknown_key(key: str) -> ConfigError:
    close = close_keys(key)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if not key.isprintable():  # a zero-width space or escape would look like the right key
        return ConfigError(f"unknown config key {ascii(key)} (it holds a character that does "
                           f"not show){hint}")
    return ConfigError(f"unknown config key {key}{hint}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 2, 6, 6
_SHORT.maxstring = _SHORT.maxother = 200


def shown(value: Any) -> str:
    """Return ``repr(value)`` for a message, a list or mapping cut short: a YAML alias bomb
    of 600 bytes expands to a list whose full repr is hundreds of MB."""
    return _SHORT.repr(value) if isinstance(value, (list, tuple, dict, set)) else repr(value)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None and prefix:  # `stage1:` with nothing (or only comments) under it
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config key {prefix.rstrip('.')}: expected a section (mapping), "
            f"found {type(raw).__name__} {shown(raw)}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            if "." in str(key) and prefix + str(key) in key_names():
                section, leaf = str(key).rsplit(".", 1)
                raise ConfigError(f"config key {prefix}{key}: dotted keys are for the command "
                                  f"line; in a YAML file write it nested, as {section}: "
                                  f"{{{leaf}: ...}} or on two lines")
            raise _unknown_key(prefix + str(key))
    if cls is Stage2Config and raw.get("methods") in ("all", ["all"]):
        raw = {**raw, "methods": list(FEATURE_METHODS)}
    elif cls is Stage2Config and isinstance(raw.get("methods"), str):
        # `stage2.methods=crt,tau_norm` on a command line: the list it can only mean
        names = [m.strip() for m in raw["methods"].split(",")]
        if len(names) > 1 and not all(names):
            raise ConfigError(f"config key stage2.methods: an empty name in "
                              f"{raw['methods']!r} (a comma at an end, or two in a row); "
                              f"expected names joined by commas, e.g. crt,tau_norm")
        if not all(m in STAGE2_METHODS for m in names):
            raise ConfigError(f"config key stage2.methods: expected all or a list of "
                              f"{', '.join(STAGE2_METHODS)}, found {shown(raw['methods'])}")
        raw = {**raw, "methods": names}
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name], prefix + f.name + ".")
        else:
            kwargs[f.name] = _coerce(raw[f.name], tp, prefix + f.name)
    return cls(**kwargs)


def type_name(tp: Any) -> str:
    """Return a readable name of a config type, e.g. 'int or null'."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    try:
        return _coerce_inner(value, tp)
    except _Mismatch:
        found = "null" if value is None else f"{type(value).__name__} {shown(value)}"
        raise ConfigError(f"config key {key}: expected {type_name(tp)}, found {found}") from None


def _coerce_inner(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce_inner(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        return [_coerce_inner(v, typing.get_args(tp)[0]) for v in value]
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"unsupported config type {tp}")


def missing_device_message(name: str) -> str:
    """What is said of device ``name`` (cuda, cuda:N, mps) on a machine without it: by
    ``distributed.resolve_device``, and by the CLI's check before torch is imported."""
    lack = "MPS is not available" if name == "mps" else "no GPU is available"
    return f"found {name!r}, but {lack}; use cpu"


def env_world_size() -> int:
    """Return the process count torchrun gives in ``WORLD_SIZE`` (1 when unset or empty);
    anything but a positive integer is refused in one line."""
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name, "").strip()
        if value and not (value.isascii() and value.isdigit()):
            raise LongtailError(f"{name}: expected this process's index, an int >= 0 (torchrun "
                                f"sets it), found {os.environ[name]!r}")
    text = os.environ.get("WORLD_SIZE", "").strip() or "1"
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise LongtailError(f"WORLD_SIZE: expected the number of processes (torchrun sets it), "
                            f"found {os.environ['WORLD_SIZE']!r}")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")
               if int(text) > 1 and not os.environ.get(k, "").strip()]
    if missing:  # set by hand, not by torchrun: torch's rendezvous would fail with a traceback
        raise LongtailError(f"WORLD_SIZE: {text} processes, but {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not set; start several "
                            f"processes with torchrun (torchrun --nproc-per-node {text} -m "
                            f"longtail run CONFIG)")
    world = int(text)
    if world > 1:  # set by hand: torch would fail with a traceback, or wait forever
        rank = int(os.environ["RANK"])
        if rank >= world:
            raise LongtailError(f"RANK: expected an index below WORLD_SIZE ({world}), found "
                                f"{rank}; torchrun sets both")
        port = os.environ["MASTER_PORT"].strip()
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise LongtailError(f"MASTER_PORT: expected a port number in [1, 65535] (torchrun "
                                f"sets it), found {os.environ['MASTER_PORT']!r}")
    return world


# Upper bounds of sizes, far above any real use, below what could not be allocated: a
# mistyped 100000 is refused at once instead of running out of memory or hanging.
MAX_IMAGE_SIZE = 4096
MAX_WIDTH = 1024
MAX_COUNT = 2**20  # batch sizes, samples_per_class, min_steps
MAX_EPOCHS = 100_000  # far beyond any schedule; 1e20 would be a typo that trains forever
MAX_TAU = 10.0
MAX_RATE = 1000.0  # learning rates, weight decays, mixup's alpha: far beyond any that trains
MIN_STD = 1e-3  # data.std: a smaller one multiplies pixel noise by over 1,000
MAX_TAU_STEPS = 1000  # each value is a pass over val's logits
# data.pareto_alpha / make-split --alpha: below, the quantiles overflow; above, they coincide
PARETO_ALPHA = (0.1, 1000.0)


def _check_semantics(cfg: Config, template: bool = False) -> list[str]:
    """Refuse settings that cannot run. ``template``: a config to write out and edit, whose
    paths to the user's data and weights may still be empty: return those messages instead."""
    def need(cond: bool, key: str, expected: str, found: Any) -> None:
        if not cond:
            raise ConfigError(f"config key {key}: expected {expected}, found {shown(found)}")

    gaps: list[str] = []

    def need_path(cond: bool, key: str, expected: str) -> None:
        if not cond:
            if not template:
                raise ConfigError(f"config key {key}: expected {expected}, found None")
            gaps.append(f"config key {key}: expected {expected}, found None")

    name = cfg.model.name
    if name not in BACKBONE_NAMES and not (name.startswith(TIMM_PREFIX)
                                           and name[len(TIMM_PREFIX):].strip()):
        close = difflib.get_close_matches(name, BACKBONE_NAMES, n=3, cutoff=0.6)
        raise ConfigError(f"config key model.name: expected one of {', '.join(BACKBONE_NAMES)} "
                          f"or timm/NAME, found {name!r}"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))
    need(not cfg.model.pretrained or name.startswith(TIMM_PREFIX), "model.pretrained",
         "false for longtail's own backbones (their weights come from model.weights)",
         cfg.model.pretrained)
    need(not (cfg.model.pretrained and cfg.model.weights), "model.pretrained",
         "false when model.weights names a file (one source of weights)", cfg.model.pretrained)
    for key in PATH_KEYS:
        value = get_key(cfg, key)
        need(value is None or value.strip() != "", key, "a path or null", value)
    need(cfg.model.trainable is None or len(cfg.model.trainable) >= 1, "model.trainable",
         "module names to train, e.g. [layer4, fc], or null (all)", cfg.model.trainable)
    for key in ("eval.many_threshold", "eval.few_threshold"):
        need(get_key(cfg, key) >= 0, key, "a count >= 0", get_key(cfg, key))
    need(cfg.eval.few_threshold <= cfg.eval.many_threshold + 1, "eval.few_threshold",
         f"at most eval.many_threshold + 1 ({cfg.eval.many_threshold + 1})",
         cfg.eval.few_threshold)
    d = cfg.data
    need_path(cfg.model.trainable is None or cfg.model.weights is not None
              or cfg.model.pretrained, "model.weights", "a file of pretrained weights, since "
              "model.trainable freezes the rest of an untrained backbone")
    for key in ("n_max", "n_min"):  # each alone first: n_max -1 is n_max's mistake
        value = getattr(d, key)
        need(value is None or value >= 1, f"data.{key}", "an int >= 1 or null", value)
    if d.n_max is not None and d.n_min is not None:
        need(d.n_max >= d.n_min >= 1, "data.n_min", f"1 <= n_min <= n_max ({d.n_max})", d.n_min)
    need(d.imbalance_ratio is None or d.imbalance_ratio >= 1, "data.imbalance_ratio",
         "a number >= 1 or null", d.imbalance_ratio)
    given = [k for k in ("train", "val", "test") if getattr(d, k) is not None]
    if d.kind in ("fmnist_lt", "cifar10_lt", "cifar100_lt") and given:  # silently unused
        raise ConfigError(f"config key data.{given[0]}: set, but data.kind {d.kind} draws its "
                          f"own split and reads no split files; for 'path label' list files "
                          f"set data.kind=list")
    if d.class_names is not None and d.kind != "list":  # the others name their own classes
        source = {"features": "the feature files' class_names",
                  "image_folder": "the sub-folders' names",
                  "inat_json": "the JSON's categories"}.get(d.kind, "the dataset's metadata")
        raise ConfigError(f"config key data.class_names: set, but data.kind {d.kind} reads no "
                          f"class-name file (it names its classes from {source}); only "
                          f"data.kind=list reads one")
    if d.n_min is not None and d.imbalance_ratio is not None:  # which one wins is not obvious
        raise ConfigError(f"config key data.imbalance_ratio: expected null when data.n_min is "
                          f"given (both fix the smallest class: n_min = n_max / ratio), found "
                          f"{d.imbalance_ratio:g} with data.n_min {d.n_min}; set one of them "
                          f"to null")
    need(PARETO_ALPHA[0] <= d.pareto_alpha <= PARETO_ALPHA[1], "data.pareto_alpha",
         f"a number in [{PARETO_ALPHA[0]:g}, {PARETO_ALPHA[1]:g}] (ImageNet-LT's is 6; outside "
         f"it the profile's quantiles overflow or coincide)", d.pareto_alpha)
    for key in ("val_per_class", "test_per_class", "val_from_train"):
        need(getattr(d, key) >= 0, f"data.{key}", "an int >= 0", getattr(d, key))
    need(d.profile != "step" or d.kind in ("cifar10_lt", "cifar100_lt"), "data.profile",
         "exponential or pareto (step is CIFAR-LT's)", d.profile)
    if d.mean is not None or d.std is not None:
        need(d.mean is not None and d.std is not None and len(d.mean) == len(d.std),
             "data.mean", "data.mean and data.std set together, one value per channel each; "
             f"data.std is {d.std}, data.mean", d.mean)
        if d.kind != "features":  # the images' channels are known from the config alone
            channels = cfg.model.in_channels or (1 if d.kind == "fmnist_lt" else 3)
            need(len(d.mean) == channels, "data.mean", f"{channels} values (one per channel"
                 + (", model.in_channels" if cfg.model.in_channels else f" of {d.kind}")
                 + ")", d.mean)
    need(cfg.stage1.epochs >= 1 or (cfg.stage1.epochs == 0 and (
        cfg.model.weights is not None or cfg.model.pretrained)),
        "stage1.epochs", "an int >= 1 (0 only with model.weights: stage 2 on those weights)",
        cfg.stage1.epochs)
    need(cfg.stage1.epochs <= MAX_EPOCHS, "stage1.epochs", f"at most {MAX_EPOCHS}",
         cfg.stage1.epochs)
    need(cfg.stage1.warmup_epochs == 0 or 0 < cfg.stage1.warmup_epochs < cfg.stage1.epochs,
         "stage1.warmup_epochs", f"0..stage1.epochs - 1 ({cfg.stage1.epochs - 1}): the cosine "
         f"needs at least one epoch after the warm-up", cfg.stage1.warmup_epochs)
    nullable = ("stage1.lr", "stage1.classifier_lr", "stage2.wb.max_norm", "stage2.balms.lr")
    for key in ("stage1.lr", "stage1.base_lr", "stage1.classifier_lr", "stage2.crt.lr",
                "stage2.lws.lr", "stage2.wb.lr", "stage2.finetune.lr", "stage2.wb.max_norm",
                "stage2.balms.lr"):
        value = get_key(cfg, key)
        # beyond MAX_RATE a step overflows float32 (a torch error, not a divergence message)
        need(value is None or 0 < value <= MAX_RATE, key,
             (f"a number in (0, {MAX_RATE:g}]" if key.endswith("max_norm")
              else f"a learning rate in (0, {MAX_RATE:g}]")
             + (" or null" if key in nullable else ""), value)
    for key in ("stage1.weight_decay", "stage2.crt.weight_decay", "stage2.lws.weight_decay",
                "stage2.wb.weight_decay", "stage2.finetune.weight_decay", "stage1.mixup_alpha"):
        need(0 <= get_key(cfg, key) <= MAX_RATE, key, f"a number in [0, {MAX_RATE:g}]",
             get_key(cfg, key))
    for key in ("stage1.loss_tau", "stage2.crt.loss_tau"):  # scales log-prior offsets
        need(0 <= get_key(cfg, key) <= MAX_TAU, key, f"a number in [0, {MAX_TAU:g}]",
             get_key(cfg, key))
    for key in ("stage1.momentum", "stage2.momentum", "stage2.wb.beta", "stage2.crt.las_head",
                "stage2.crt.las_tail"):
        need(0 <= get_key(cfg, key) < 1, key, "a number in [0, 1)", get_key(cfg, key))
    # each worker is a process with its own copy of the pipeline: thousands exhaust memory
    most_workers = max(8, 4 * (os.cpu_count() or 1))
    need(d.num_workers is None or 0 <= d.num_workers <= most_workers, "data.num_workers",
         f"an int in [0, {most_workers}] ({os.cpu_count()} CPUs here) or null", d.num_workers)
    # Images are scaled to [0, 1] before normalizing: values of the 0-255 scale (ImageNet's
    # 123.7 and 58.4) would feed the model inputs near -2 or +100, and tiny stds overflow.
    scale = "; values of the 0-255 scale divided by 255"
    need(d.std is None or all(MIN_STD <= v <= 1 for v in d.std), "data.std", f"values in "
         f"[{MIN_STD:g}, 1] (images scaled to [0, 1] are divided by them{scale})", d.std)
    need(d.mean is None or all(0 <= v <= 1 for v in d.mean), "data.mean",
         f"values in [0, 1] (subtracted from images scaled to [0, 1]{scale})", d.mean)
    need(d.image_size is None or 8 <= d.image_size <= MAX_IMAGE_SIZE, "data.image_size",
         f"an int in [8, {MAX_IMAGE_SIZE}] or null", d.image_size)
    need(cfg.model.in_channels in (None, 1, 3), "model.in_channels", "1, 3 or null",
         cfg.model.in_channels)
    need(8 <= cfg.model.width <= MAX_WIDTH, "model.width", f"an int in [8, {MAX_WIDTH}] "
         f"(narrower stems crash oneDNN on CPU; 64 is ResNet's own)", cfg.model.width)
    need(0 <= cfg.seed < 2**32, "seed", "an int in [0, 2^32)", cfg.seed)
    need(cfg.stage1.eval_every >= 0, "stage1.eval_every", "an int >= 0", cfg.stage1.eval_every)
    need(d.split_seed is None or 0 <= d.split_seed < 2**32, "data.split_seed",
         "an int in [0, 2^32) or null", d.split_seed)
    need(re.fullmatch(r"auto|cpu|mps|cuda(:(0|[1-9]\d*))?", cfg.device) is not None, "device",
         "auto, cpu, cuda, cuda:N or mps", cfg.device)
    need(len(cfg.stage2.methods) >= 1, "stage2.methods", "at least one method, e.g. "
         f"[{', '.join(DEFAULT_METHODS)}]", cfg.stage2.methods)
    for key in ("stage1.batch_size", "stage2.batch_size", "eval.batch_size",
                "stage1.samples_per_class", "model.width", "stage1.base_batch_size",
                "stage2.samples_per_class", "stage2.finetune.batch_size", "stage1.min_steps",
                "stage2.min_steps"):
        value = get_key(cfg, key)
        need(1 <= value <= MAX_COUNT, key, f"an int in [1, {MAX_COUNT}]", value)
    # Training BatchNorm needs two images per step and process (one gives no variance: torch
    # stops with "Expected more than 1 value per channel"); torchrun's processes split a batch.
    world = env_world_size()
    # cuda:N would put every process of a machine on that one GPU (NCCL: "Duplicate GPU
    # detected"); one process per machine may name its GPU
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    local = int(local) if local.isdecimal() else world
    need(local == 1 or not cfg.device.startswith("cuda:"), "device", f"cuda or auto under "
         f"torchrun ({local} processes on this machine: each takes GPU LOCAL_RANK; "
         f"CUDA_VISIBLE_DEVICES picks which)", cfg.device)
    finetuned = any(m in cfg.stage2.methods for m in FINETUNE_METHODS)
    for key in ("stage1.batch_size", *(["stage2.finetune.batch_size"] if finetuned else [])):
        value = get_key(cfg, key)
        fit = max(2 * world, value // world * world)  # the nearest below: 126 for 128 on 3
        need(value % world == 0, key, f"a multiple of the {world} processes (WORLD_SIZE), "
             f"e.g. {key}={fit} on the command line", value)
        need(value // world >= 2, key, "at least 2 images per process (BatchNorm in training "
             + (f"needs two; {world} processes)" if world > 1 else "needs two)"), value)
    for key in ("stage2.crt.epochs", "stage2.lws.epochs", "stage2.wb.epochs",
                "stage2.finetune.epochs"):
        value = getattr(cfg.stage2, key.split(".")[1]).epochs
        # 0 epochs would report an untrained classifier as the method's result: cRT's random
        # one, or LWS's and WB's joint one unchanged (the Python classes allow it)
        need(value >= 1, key, "an int >= 1", value)
        need(value <= MAX_EPOCHS, key, f"at most {MAX_EPOCHS}", value)
    for section in ("tau_norm", "logit_adjust"):
        grid = getattr(cfg.stage2, section)
        # tau beyond a few makes the weights' norms (or the prior) all that counts; an
        # unbounded grid would take minutes to search
        need(0 <= grid.grid_max <= MAX_TAU, f"stage2.{section}.grid_max",
             f"a number in [0, {MAX_TAU}]", grid.grid_max)
        need(0 < grid.grid_step < math.inf and grid.grid_max / grid.grid_step <= MAX_TAU_STEPS,
             f"stage2.{section}.grid_step", f"> 0 and at least grid_max / {MAX_TAU_STEPS} "
             f"({grid.grid_max / MAX_TAU_STEPS:g}, at most {MAX_TAU_STEPS} values)",
             grid.grid_step)
        need(grid.tau is not None or grid.grid_max == 0 or grid.grid_step <= grid.grid_max,
             f"stage2.{section}.grid_step", f"at most grid_max ({grid.grid_max:g}): a larger "
             f"step leaves tau 0 alone in the grid", grid.grid_step)
        need(grid.tau is None or 0 <= grid.tau <= MAX_TAU, f"stage2.{section}.tau",
             f"a number in [0, {MAX_TAU}] or null", grid.tau)
    need(len(set(cfg.stage2.methods)) == len(cfg.stage2.methods), "stage2.methods",
         "each method at most once", cfg.stage2.methods)
    for key, spec in (("stage1.sampler", cfg.stage1.sampler),
                      ("stage2.crt.sampler", cfg.stage2.crt.sampler),
                      ("stage2.lws.sampler", cfg.stage2.lws.sampler),
                      ("stage2.wb.sampler", cfg.stage2.wb.sampler),
                      ("stage2.finetune.sampler", cfg.stage2.finetune.sampler)):
        try:
            parse_sampler_spec(spec)
        except ValueError as e:
            raise ConfigError(f"config key {key}: {e}") from None
    if d.kind in ("list", "inat_json", "features"):
        what = {"list": "list", "inat_json": "JSON", "features": ".npz, .pt or .safetensors"}
        for key in ("train", "test"):
            need_path(getattr(d, key) is not None, f"data.{key}",
                      f"a {what[d.kind]} file (data.kind is {d.kind})")
    if d.kind in ("list", "inat_json", "image_folder", "cifar10_lt", "cifar100_lt"):
        need_path(d.root is not None, "data.root", f"the dataset folder (data.kind is {d.kind})")
    if d.kind == "image_folder" and d.train is None:  # the whole split is drawn from data.root
        for key in ("val", "test"):
            need(getattr(d, key) is None, f"data.{key}", "null, since data.train is not set: "
                 "image_folder draws train, val and test from data.root's class folders (set "
                 "data.train too to use the folders as they are)", getattr(d, key))
    generated = d.kind in ("fmnist_lt", "cifar10_lt", "cifar100_lt") or (
        d.kind == "image_folder" and d.train is None)
    has_val = d.val_per_class > 0 if generated else (d.val is not None or d.val_from_train > 0)
    # the keys that give a val split to this kind of data (val_per_class: generated splits)
    val_keys = "data.val_per_class" if generated else "data.val or data.val_from_train"
    if not generated and d.val_per_class > 0:  # e.g. the demo config's, kept for a list
        val_keys += " (data.val_per_class makes val only where longtail draws the split)"
    for key, select in (("stage1.select", cfg.stage1.select),
                        ("stage2.select", cfg.stage2.select)):
        need(select == "last" or has_val, key, f"last, since there is no val split (set "
             f"{val_keys})", select)
    need(cfg.stage2.bn == "eval" or cfg.stage2.features == "online", "stage2.bn",
         "eval unless stage2.features is online (bn is the mode of the backbone that online "
         "runs; cached features were extracted in eval mode)", cfg.stage2.bn)
    if d.kind == "features":  # no images: what works on images cannot be asked for
        need(cfg.stage2.features == "cached", "stage2.features", "cached (online runs the "
             "backbone on images; data.kind: features has none)", cfg.stage2.features)
        need(cfg.stage1.mixup_alpha == 0, "stage1.mixup_alpha", "0 (mixup mixes images; "
             "data.kind: features has none)", cfg.stage1.mixup_alpha)
        finetuned = [m for m in cfg.stage2.methods if m in FINETUNE_METHODS]
        need(not finetuned, "stage2.methods", f"no {' or '.join(finetuned)} ("
             f"{'they train' if len(finetuned) > 1 else 'it trains'} the network on images; "
             f"data.kind: features has none)", cfg.stage2.methods)
    for name in ("tau_norm", "logit_adjust"):
        if name in cfg.stage2.methods and getattr(cfg.stage2, name).tau is None and not has_val:
            raise ConfigError(f"config key stage2.{name}.tau: null chooses tau on the val "
                              f"split, but there is none; set {val_keys}, or a fixed tau")
    return gaps


def template_gaps(cfg: Config) -> list[str]:
    """Return what a run of ``cfg``, loaded with ``template=True``, still needs (data.root,
    model.weights, ...), one message per key."""
    return _check_semantics(cfg, template=True)


def get_key(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def config_reference() -> str:
    """Return a Markdown table of every config key: type, default and help."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    defaults = flatten(Config())
    for name, f, tp in _fields():
        if dataclasses.is_dataclass(tp):
            continue
        default = yaml.safe_dump(defaults[name], default_flow_style=True)
        default = default.strip().removesuffix("...").strip()
        lines.append(f"| `{name}` | {type_name(tp)} | `{default}` | "
                     f"{f.metadata.get('help', '')} |")
    return "\n".join(lines) + "\n"


_GENERATED = ("generated splits (fmnist_lt, cifar10_lt, cifar100_lt, image_folder without "
              "data.train)")


def check_timm_installed(cfg: Config) -> None:
    """Refuse a timm/ model where timm is not installed, at once (found without importing it:
    the import error came after torch's import, 5 s in)."""
    import importlib.util

    if cfg.model.name.startswith(TIMM_PREFIX) and cfg.data.kind != "features" and \
            importlib.util.find_spec("timm") is None:
        raise ConfigError(TIMM_MISSING)


def ignored_overrides(cfg: Config, overrides: list[str]) -> list[str]:
    """Return a note for each command-line override of a data key that this dataset does not
    read (``data.n_max=...`` with split lists of its own, ...), or of a key that applies to
    another setting of a key than the one given (``stage1.loss_tau`` with ``loss: ce``): it
    would be ignored silently.
    Keys set in the config file are not noted (a config serves several datasets), nor keys
    set to null. A key given more than once is noted too."""
    d = cfg.data
    arrays = d.kind in ("fmnist_lt", "cifar10_lt", "cifar100_lt")
    generated = arrays or (d.kind == "image_folder" and d.train is None)
    as_given = (f"data.kind {d.kind}" + (" with data.train" if d.kind == "image_folder" else "")
                + f" reads its split as given; it applies to {_GENERATED}")
    applies = {
        "data.n_max": (generated, as_given),
        "data.n_min": (generated, as_given),
        "data.imbalance_ratio": (generated, as_given),
        "data.profile": (generated, as_given),
        "data.val_per_class": (generated, as_given),
        "data.pareto_alpha": (generated and d.profile == "pareto",
                              "it applies to data.profile: pareto"),
        "data.class_order": (generated and not d.kind.startswith("cifar"),
                             "cifar's class order is Cao et al.'s" if generated else as_given),
        "data.test_per_class": (d.kind == "image_folder" and d.train is None and d.test is None,
                                "it applies to image_folder without data.train and data.test"),
        "data.val_from_train": (d.val is None and not arrays,
                                "data.val is set" if d.val is not None else
                                f"data.kind {d.kind} draws val itself (data.val_per_class)"),
        # keys of one setting of another key
        "stage1.loss_tau": (cfg.stage1.loss == "logit_adjusted",
                            "it applies to stage1.loss: logit_adjusted"),
        "stage2.crt.loss_tau": (cfg.stage2.crt.loss == "logit_adjusted",
                                "it applies to stage2.crt.loss: logit_adjusted"),
        "stage1.samples_per_class": (cfg.stage1.sampler == "class_aware",
                                     "it applies to stage1.sampler: class_aware"),
        "stage2.samples_per_class": (
            any(stage2_sampler(cfg.stage2, m) == "class_aware" for m in cfg.stage2.methods),
            "it applies to the class_aware sampler of stage2.crt, lws, wb or finetune"),
    }
    for section in ("tau_norm", "logit_adjust"):  # the grid of a tau searched on val
        tau = getattr(cfg.stage2, section).tau
        for key in ("grid_max", "grid_step"):
            applies[f"stage2.{section}.{key}"] = (
                tau is None, f"stage2.{section}.tau is {tau:g}, not searched (null searches it)"
                if tau is not None else "")
    keys = [override_key(o) for o in overrides]
    notes = [f"note: {key} is ignored here: {applies[key][1]}" for key in keys
             if key in applies and not applies[key][0] and get_key(cfg, key) is not None]
    # A key given twice (a script's common overrides, then the run's own): the last one wins,
    # said so, as it would otherwise go unseen.
    for key in dict.fromkeys(k for i, k in enumerate(keys) if k in keys[:i]):
        given = " ".join(o for o, k in zip(overrides, keys) if k == key)
        notes.append(f"note: {key} is given more than once ({given}); the last one is used")
    return notes
