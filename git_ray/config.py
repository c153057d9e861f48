"""Typed trial configuration: one frozen pydantic tree, loaded from YAML, with clear errors.

The tree (dataset, model, train, balance, augment, generator, eval, seed) is the single
description of a trial. Sweeps are data over it: dotted overrides such as `balance.loss=ldam`
or a partial sub-config merged into `base`. Unknown keys, wrong types and unknown registry names
raise `ConfigError` naming the key, the bad value and the valid choices, before any work starts.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Mapping, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from git_ray import registry
from git_ray.registry import UnknownNameError


class ConfigError(ValueError):
    """A user mistake in a config or sweep file: the message says what, where and what to do."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads True as 1 and False as 0.0: `epochs: true` would train one
        # epoch. A bool is only accepted where the field itself is a bool.
        if isinstance(value, bool) and info.field_name is not None:
            kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
            if kinds & {int, float} and bool not in kinds:
                raise ValueError(f"expected a number, not the boolean {value}; write a number")
        return value


def _scalar_kinds(annotation: Any) -> set[type]:
    """The plain types an annotation admits (int | None -> {int, NoneType})."""
    args = get_args(annotation)
    if args and get_origin(annotation) in (Union, UnionType):
        return set().union(*(_scalar_kinds(a) for a in args))
    return {annotation} if isinstance(annotation, type) else set()


def _check_name(reg: registry.Registry, value: str) -> str:
    if value not in reg:
        raise ValueError(f"{value!r} is not a known {reg.kind}; choose one of: {', '.join(reg.names())}")
    return value


class DatasetConfig(Strict):
    source: str = "digits"
    root: str | None = None  # folder holding the real data set's files (not used by digits)
    image_size: int | None = Field(None, ge=8, le=256)  # None: the source's own size (digits: 16)
    nuisance: str = "background"
    nuisance_strength: float = Field(1.0, ge=0.0, le=1.0)  # 0 = identity, 1 = the paper's range
    profile: str = "zipf"
    imbalance_ratio: float = Field(100.0, ge=1.0)  # largest / smallest training class
    zipf_alpha: float | None = Field(None, gt=0.0)  # zipf only: fixes the exponent (K49-LT: 2.0)
    max_per_class: int | None = Field(None, ge=1)  # largest class; None: the source's default
    min_per_class: int = Field(1, ge=1)  # floor on every class (K49-LT: 5)
    instance: int = Field(0, ge=0)  # which shuffled class order (the paper uses 30 per nuisance)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # of the official train split, seeded
    split_seed: int = 0

    _source = field_validator("source")(lambda v: _check_name(registry.SOURCES, v))
    _nuisance = field_validator("nuisance")(lambda v: _check_name(registry.NUISANCES, v))
    _profile = field_validator("profile")(lambda v: _check_name(registry.PROFILES, v))


class ModelConfig(Strict):
    arch: str = "small_cnn"
    head: Literal["auto", "linear", "cosine"] = "auto"  # auto: cosine for LDAM, else linear
    width: int = Field(16, ge=1)  # channels of the first stage

    _arch = field_validator("arch")(lambda v: _check_name(registry.ARCHS, v))


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(2e-4, ge=0.0)
    warmup_epochs: int = Field(5, ge=0)
    s1: int = Field(20, ge=0)  # lr x 0.01 after s1; DRS / DRW / GIT switch on at s1
    s2: int = Field(25, ge=0)  # lr x 0.0001 after s2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None: leave as set
    nan_check: bool = True  # raise NonFiniteLossError on a NaN/inf loss

    @model_validator(mode="after")
    def _schedule(self) -> "TrainConfig":
        if not self.s1 <= self.s2:
            raise ValueError(f"s1 ({self.s1}) must not come after s2 ({self.s2})")
        if self.s2 > self.epochs:  # s1 = s2 = epochs is allowed: no decay at all
            raise ValueError(f"s2 ({self.s2}) lies past the last epoch (epochs {self.epochs}); "
                             f"set train.s2 (and train.s1) to at most {self.epochs}, or raise train.epochs")
        return self


class BalanceConfig(Strict):
    loss: str = "ce"
    sampler: str = "none"
    reweight: str = "none"
    focal_gamma: float = Field(1.0, ge=0.0)
    ldam_max_margin: float = Field(0.5, gt=0.0)
    ldam_scale: float = Field(30.0, gt=0.0)
    reweight_beta: float = Field(0.9999, gt=0.0, lt=1.0)

    _loss = field_validator("loss")(lambda v: _check_name(registry.LOSSES, v))
    _sampler = field_validator("sampler")(lambda v: _check_name(registry.SAMPLERS, v))
    _reweight = field_validator("reweight")(lambda v: _check_name(registry.CLASS_WEIGHTS, v))


class AugmentConfig(Strict):
    oracle: bool = False  # apply the true nuisance to each training batch
    nuisance_strength: float = Field(1.0, ge=0.0, le=1.0)  # strength of the oracle augmentation
    flip: bool = False  # random horizontal flips (CIFAR)
    git: bool = False  # generative invariance transfer
    gen_frac: float = Field(0.5, ge=0.0, le=1.0)  # share of each batch replaced by generated images
    git_start: Literal["s1", "start"] = "s1"
    style_scale: float = Field(1.0, ge=0.0)
    git_threshold: int | None = Field(None, ge=1)  # augment only classes smaller than this


class GeneratorConfig(Strict):
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1)
    dim: int = Field(64, ge=4)
    style_dim: int = Field(8, ge=1)
    n_downsample: int = Field(2, ge=0, le=4)
    n_res: int = Field(4, ge=0)
    mlp_dim: int = Field(256, ge=8)
    lr: float = Field(1e-4, gt=0.0)
    checkpoint_every: int = Field(500, ge=1)
    seed: int = 0  # its own seed, so trials differing only in their seed share one generator
    # Weight of MUNIT's style reconstruction loss; None: the paper's 1. With both domains drawn
    # from one pool, nothing else makes the decoder use the style code (see generative/train.py).
    style_weight: float | None = Field(None, gt=0.0)
    # The discriminator's conv layers (None: METHOD.md's 4, fewer where the image cannot be halved
    # that often) and width (None: `dim`). At 28 px four layers leave one score for the whole
    # image; 2 layers give a patch discriminator (7x7 scores, each seeing 10 px) that judges
    # stroke texture, which on glyphs-DIL moves stroke width into the style (README, GIT generators).
    dis_layers: int | None = Field(None, ge=1, le=4)
    dis_dim: int | None = Field(None, ge=4)
    cache: str | None = None  # folder or URI; None: <storage>/generators (train: <out>/generators)


def check_downsample(d: DatasetConfig, g: GeneratorConfig) -> None:
    """MUNIT's content encoder halves the image n_downsample times (padding to a multiple of
    2**n_downsample) and needs a content code of at least 2x2 (git_ray.generative.networks)."""
    from git_ray.data.sources import native_size

    size = d.image_size or native_size(d.source)
    if size is None:  # a source that does not declare its size: the generator checks at build time
        return
    code = math.ceil(size / 2 ** g.n_downsample)
    if code < 2:
        largest = max(n for n in range(5) if math.ceil(size / 2 ** n) >= 2)
        raise ValueError(f"generator.n_downsample {g.n_downsample} is too many for {size}-px images "
                         f"(a {code}x{code} content code; MUNIT needs at least 2x2): set "
                         f"generator.n_downsample to at most {largest}, or a larger dataset.image_size")


CPU_FORWARD_BATCH = 256
# (section, field), None by default: left out of the trial id when None. The generator cache's
# fingerprint keeps its own list (generative/cache.py: ADDED_FIELDS) without style_weight: that
# field entered generator fingerprints as soon as it was added, so leaving it out now would lose
# every generator cached since. The two lists differ on purpose.
ADDED_AFTER_0_1 = (("eval", "val_per_class"), ("generator", "style_weight"), ("generator", "dis_layers"),
                   ("generator", "dis_dim"))


class EvalConfig(Strict):
    ekld_images_per_class: int = Field(40, ge=1)
    ekld_draws: int = Field(100, ge=1)
    batch_size: int = Field(1024, ge=1)  # images per nuisance-draw chunk (fixes the eKLD draws)
    # Images per model call in evaluation: where the trial runs, not its identity (a different
    # size changes no draw, only float rounding). None: CPU_FORWARD_BATCH on a CPU, where
    # activations of 1024 images spill out of cache (1.7x slower than 256), batch_size elsewhere.
    forward_batch: int | None = Field(None, ge=1)
    # Validate each epoch on the first N images of every class of the validation split (a fixed,
    # class-balanced subset) instead of all of it. K49's split holds 46,473 images, 6x a
    # K49-LT training epoch: validating on all of it is most of a trial's model work.
    val_per_class: int | None = Field(None, ge=1)
    many_threshold: int = Field(100, ge=1)  # classes with more training images are "many"
    few_threshold: int = Field(20, ge=1)  # classes with fewer are "few"

    def forward_batch_for(self, device: "str | object") -> int:
        if self.forward_batch is not None:
            return self.forward_batch
        return CPU_FORWARD_BATCH if str(device).startswith("cpu") else self.batch_size

    @model_validator(mode="after")
    def _thresholds(self) -> "EvalConfig":
        if self.few_threshold > self.many_threshold:
            raise ValueError("few_threshold must not exceed many_threshold")
        return self


class TrialConfig(Strict):
    # default_factory: building defaults at import time would load the registries mid-import
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _cross_section(self) -> "TrialConfig":
        t, a = self.train, self.augment
        if a.git and a.git_start == "s1" and t.s1 >= t.epochs:
            raise ValueError(f"augment.git_start is s1 but train.s1 ({t.s1}) is not before the last "
                             f"epoch (train.epochs {t.epochs}): GIT would never run; set train.s1 below "
                             f"{t.epochs} or augment.git_start: start")
        if a.git:
            check_downsample(self.dataset, self.generator)
        return self

    def flat(self) -> dict[str, Any]:
        """Every field as `section_field` columns (the Parquet config columns)."""
        return flatten(self.model_dump(), sep="_")

    def fingerprint(self) -> str:
        """A stable id of the config: equal configs share it, any change that can alter the
        result alters it. Where files live (data root, generator cache) and where the trial runs
        (device, threads, evaluation's forward batch) are not identity."""
        d = self.model_dump()
        d["dataset"].pop("root")
        d["generator"].pop("cache")
        d["train"].pop("device")
        d["train"].pop("threads")
        d["eval"].pop("forward_batch")
        # Fields added after 0.1.0 enter the id only when set, so results stored by 0.1.0 keep
        # their ids (a resumed sweep finds them) while every setting that changes a result counts.
        for section, key in ADDED_AFTER_0_1:
            if d[section][key] is None:
                d[section].pop(key)
        return stable_hash(d)

    @property
    def logit_scale(self) -> float:
        """What turns the model's outputs into the logits its loss trained: LDAM scales cosines
        by s inside the loss, so predictions (and eKLD's softmax) must use s * cosine too."""
        return self.balance.ldam_scale if self.balance.loss == "ldam" else 1.0

    @property
    def head(self) -> str:
        if self.model.head != "auto":
            return self.model.head
        return "cosine" if self.balance.loss == "ldam" else "linear"


# ---------------------------------------------------------------------------------------------
# Dict helpers shared with the sweep layer


def stable_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def flatten(d: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(v, sep, key))
        else:
            out[key] = v
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` laid over it; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_dotted(d: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `d` with `value` set (merged, if both are mappings) at `a.b.c`."""
    update: Any = value
    for part in reversed(dotted.split(".")):
        update = {part: update}
    return deep_merge(d, update)


def parse_override(text: str) -> tuple[str, Any]:
    """`balance.loss=ldam` -> ("balance.loss", "ldam"); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. balance.loss=ldam)")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


# ---------------------------------------------------------------------------------------------
# Loading and error reporting


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: the config is not valid:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key (value {e['input']!r}); check its spelling "
                         "against the README's config reference")
        elif e["type"] == "missing" or isinstance(e["input"], Mapping):
            # a rule across fields names its keys and values itself; a whole section would bury it
            lines.append(f"  - {loc}: {msg}")
        else:
            lines.append(f"  - {loc}: {msg} (got {e['input']!r})")
    return "\n".join(lines)


def trial_config(data: Mapping[str, Any], where: str = "config") -> TrialConfig:
    """Validate a plain dict as a TrialConfig, or raise ConfigError explaining every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config sections, got {type(data).__name__}")
    try:
        return TrialConfig.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None
    except UnknownNameError as err:  # pragma: no cover - validators turn these into ValueErrors
        raise ConfigError(f"{where}: {err}") from None


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file; pass the path of a YAML config (see configs/)")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None


def load_trial_config(path: str | Path, overrides: list[str] | None = None) -> TrialConfig:
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty; write a trial config in it (see configs/, "
                          "e.g. configs/digits_background.yaml)")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return trial_config(apply_overrides(data, overrides or []), where=str(path))


def apply_overrides(data: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A raw config with `key.sub=value` overrides (as `git-ray train --set` takes them) applied in order."""
    out = dict(data)
    for text in overrides:
        key, value = parse_override(text)
        out = set_dotted(out, key, value)
    return out
