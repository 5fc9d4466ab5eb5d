"""The one config: typed sections, strict loading, overrides, validation, hash.

`load_config(path, overrides)` reads the YAML with `yaml.safe_load`, applies the
`--set dotted.key=value` overrides (values parsed as YAML), converts every value
to its field's type and validates ranges. Any problem is a `UserError` naming
the file, the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from regimen.errors import UserError
from regimen.machine import require_memory

log = logging.getLogger(__name__)

DATASETS = ("storms", "digits", "regimes", "npz")
TASKS = ("segmentation", "tagging", "regression")
TASKS_OF_DATASET = {
    "storms": ("segmentation", "regression"),
    "digits": ("segmentation", "tagging", "regression"),
    "regimes": ("tagging",),
    "npz": TASKS,
}
STATIC_FEATURES = ("edges", "motion", "mask")
PGM_TYPES = ("crf", "hmm", "chain_crf")
JOINT_MODES = ("alternating", "end_to_end")
UNARY_LOSSES = ("auto", "ce", "kl", "mse")
CALIBRATIONS = ("auto", "temperature", "isotonic", "none")
# What a trial can be selected on (evaluate.py's validation metrics), and whether higher is better;
# `metric` is the task's main metric (mIoU, accuracy or RMSE).
OBJECTIVES = {"metric": None, "ece": False, "nll": False, "boundary_f1": True, "flicker": False,
              "latency": False, "memory": False, "parameters": False}
CMAES_OBJECTIVES = ("kl", "nll", "metric")
MAX_OBJECTIVES = 5  # evolutionary.objectives: DEAP fitness classes are made for 1 to this many
MAX_SEED = 2 ** 31 - 1  # numpy's legacy seeding takes < 2**32, and phases add small offsets to the seed
MAX_YAML_NODES = 100_000  # a config is a few hundred; an alias bomb expands to billions
MAX_PATH = 4096  # Linux's PATH_MAX; one name at most NAME_MAX = 255 bytes
# Bytes per generated pixel of a built-in dataset while phase 0 runs: the clean field, noise, observation,
# labels, soft targets and the normalised copy (float64 where numpy computes in it).
GENERATOR_BYTES_PER_PIXEL = 64


@dataclass
class StormsConfig:
    num_cells: int = 5  # rain cells per sequence
    noise_std: float = 0.45  # std of the additive sensor noise (the heavy-rain threshold is 1.0)
    clutter_fraction: float = 0.02  # fraction of pixels with static ground clutter


@dataclass
class DigitsConfig:
    num_digits: int = 2  # digits moving on each canvas
    digit_scale: int = 2  # upscaling of scikit-learn's 8x8 digits (2: 16x16)
    noise_std: float = 0.1  # std of additive noise on the [0, 1] canvas


@dataclass
class RegimesConfig:
    num_regimes: int = 3  # hidden regimes (2-4): drift east, drift south, diffusion, drift west
    stay_prob: float = 0.9  # probability of keeping the regime from one frame to the next
    noise_std: float = 0.1  # std of additive observation noise


@dataclass
class GeneratorConfig:
    num_sequences: int = 64  # sequences generated before splitting
    sequence_length: int = 24  # frames per sequence
    height: int = 32  # grid rows
    width: int = 32  # grid columns
    storms: StormsConfig = field(default_factory=StormsConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)
    regimes: RegimesConfig = field(default_factory=RegimesConfig)


@dataclass
class AugmentationConfig:
    spatial_flip: bool = True
    rotate_deg: list[int] = field(default_factory=lambda: [0, 90, 180, 270])
    temporal_jitter: int = 0
    cutout_size: int = 0
    gaussian_noise_std: float = 0.01


@dataclass
class DataConfig:
    root: str = "./data"
    dataset: str = "storms"
    task: str = "segmentation"
    path: Optional[str] = None
    num_classes: Optional[int] = None
    format: str = "NTHWC"
    T_window: int = 8
    stride: int = 4
    normalize: bool = True
    splits: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    static_features: list[str] = field(default_factory=list)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    augmentations: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class ConvLSTMConfig:
    num_layers: int = 2
    hidden_sizes: list[int] = field(default_factory=lambda: [16, 16])
    kernel_size: int = 3
    dropout: float = 0.1
    bidirectional: bool = False


@dataclass
class PGMConfig:
    type: str = "crf"
    pairwise_weight: float = 0.7
    temporal_links: bool = True
    mean_field_iters: int = 5
    neighbourhood: int = 4  # spatial neighbours of the CRF: 4 or 8
    compatibility: str = "learned"  # potts | learned (a symmetric K x K matrix, Potts at the start)
    fit: str = "mle"  # mle (labelled: counts or gradient) | em (HMM: Baum-Welch, labels unused)
    fit_steps: int = 150  # gradient steps when fitting crf / chain_crf parameters
    fit_lr: float = 0.05  # Adam learning rate of those steps
    l2: float = 1.0e-3  # Gaussian prior (MAP) on crf / chain_crf parameters
    pseudo_count: float = 1.0  # HMM Dirichlet pseudo-counts (0: maximum likelihood)


@dataclass
class ModelConfig:
    convlstm: ConvLSTMConfig = field(default_factory=ConvLSTMConfig)
    pgm: PGMConfig = field(default_factory=PGMConfig)


@dataclass
class JointConfig:
    mode: str = "alternating"  # alternating | end_to_end
    epochs: int = 4  # joint epochs (alternating: one PGM fit + one network epoch each)
    lr: float = 5.0e-4  # peak learning rate of the joint fine-tuning


@dataclass
class TrainingConfig:
    optimizer: str = "adamw"
    lr: float = 2.0e-3
    weight_decay: float = 1.0e-2
    batch_size: int = 8
    epochs: int = 8
    warmup_epochs: int = 1
    grad_clip: float = 1.0
    mixed_precision: bool = True
    early_stopping_patience: int = 8
    save_feature_maps: bool = False  # features.pt also holds the last layer's feature maps
    joint: JointConfig = field(default_factory=JointConfig)


@dataclass
class LossConfig:
    unary: str = "auto"  # auto (ce, or mse for regression) | ce | kl (needs soft targets) | mse
    alpha_unary: float = 1.0
    beta_structured: float = 0.6
    gamma_consistency: float = 0.2


@dataclass
class LowFidelityConfig:
    generations: int = 1  # the first generations run at low fidelity; 0: never
    downsample_factor: int = 2
    max_epochs: int = 2


@dataclass
class StagnationConfig:
    generations: int = 3  # generations without a better best fitness that count as stagnation
    mutation_boost: float = 2.0  # the mutation rate is multiplied by this while stagnating
    immigrants: int = 1  # worst individuals per island replaced by random ones


@dataclass
class CMAESConfig:
    groups: list[str] = field(default_factory=lambda: ["all"])  # all | head | pgm | a parameter-name prefix
    objective: str = "kl"  # kl (against soft targets, else one-hot) | nll | metric
    population_size: int = 16
    generations: int = 30
    sigma: float = 0.1
    covariance: str = "auto"  # full | diagonal (separable, pycma's CMA_diagonal) | auto (diagonal above 1000 weights)
    batch_windows: int = 8  # validation windows per evaluation (the same ones every generation)


@dataclass
class EvolutionaryConfig:
    enabled: bool = True
    population_size: int = 6
    generations: int = 3
    elitism: int = 2
    tournament_k: int = 3
    mutation_rate: float = 0.15
    crossover_rate: float = 0.7
    n_islands: int = 1
    migration_interval: int = 2
    migrants: int = 1
    objectives: list[str] = field(default_factory=lambda: ["metric"])
    trial_joint: bool = False
    trial_timeout_s: float = 1800.0
    trial_retries: int = 1
    devices: Optional[list[int]] = None
    scheduler: Optional[str] = None
    low_fidelity: LowFidelityConfig = field(default_factory=LowFidelityConfig)
    stagnation: StagnationConfig = field(default_factory=StagnationConfig)
    cmaes: CMAESConfig = field(default_factory=CMAESConfig)
    search_space: dict[str, dict] = field(default_factory=dict)


@dataclass
class EvaluationConfig:
    split: str = "test"  # the split evaluate.py reports (export.py always calibrates on val, reports test)
    bins: int = 15  # equal-width confidence bins of ECE, MCE and the reliability curve
    boundary_tolerance: int = 1  # nodes a predicted boundary may be off and still count
    calibration: str = "auto"  # auto (lower val ECE) | temperature | isotonic | none


@dataclass
class Config:
    seed: int = 42
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    evolutionary: EvolutionaryConfig = field(default_factory=EvolutionaryConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override, type-check and validate a config file.

    Raises:
        UserError: naming the file, the key, the value and what is expected.
    """
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise UserError(f"{source}: is a folder; expected a YAML config file")
    if not path.is_file():
        raise UserError(f"{source}: config file not found")
    try:
        raw = safe_yaml(path.read_text(), source)
    except UnicodeDecodeError:
        raise UserError(f"{source}: not a text file") from None
    if raw is None:
        log.warning("%s is empty: every key takes its default", source)
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections at the top, got {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    config = from_dict(raw, source)
    validate(config, source)
    return config


def safe_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load` that refuses a duplicate key (instead of keeping the last) and a document
    whose aliases expand to more than `MAX_YAML_NODES` nodes (an alias bomb)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{source}: malformed YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Count the nodes `root` expands to (aliases counted at every use) and find duplicate keys."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, open_nodes: frozenset) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise UserError(f"{source}: an alias at line {node.start_mark.line + 1} refers to itself")
        inside = open_nodes | {id(node)}
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise UserError(f"{source}: key '{key.value}' appears twice in one section (line "
                                        f"{key.start_mark.line + 1}); keep one")
                    seen.add(key.value)
                total += size(key, inside) + size(value, inside)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, inside) for item in node.value)
        if total > MAX_YAML_NODES:
            raise UserError(f"{source}: the YAML expands to more than {MAX_YAML_NODES} values through its "
                            "aliases (&/*); write the values out")
        sizes[id(node)] = total
        return total

    size(root, frozenset())


def from_dict(raw: dict, source: str = "config") -> Config:
    """Convert a plain mapping (missing keys take their defaults) to a `Config`."""
    return _convert(raw, Config, "", source)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML; `load_config` of it gives the same config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


def digest(value: Any) -> str:
    """sha256 of a value's canonical JSON form (sorted keys, no spaces, anything else as text)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_hash(config: Config) -> str:
    """sha256 of the canonical JSON form of the resolved config."""
    return digest(to_dict(config))


def leaf_keys(cls: Optional[type] = None, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of the config with its annotated type."""
    cls = cls or Config
    keys = {}
    for f, hint in _fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            keys.update(leaf_keys(hint, name + "."))
        else:
            keys[name] = hint
    return keys


def get_key(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {override!r}: expected dotted.key=value")
    value = safe_yaml(text, f"--set {key}")
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _convert(value: Any, hint: Any, key: str, source: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a UserError."""
    where = f"{source}: {key or 'top level'}"
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{where} = {value!r}: expected a section (a mapping of keys)")
        known = {f.name: h for f, h in _fields(hint)}
        for name in value:
            if name not in known:
                hint = _did_you_mean(str(name), list(known), prefix=key)
                raise UserError(f"{source}: unknown key '{_join(key, name)}'{hint}")
        kwargs = {name: _convert(value[name], known[name], _join(key, name), source)
                  for name in value}
        return hint(**kwargs)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), key, source)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} = {value!r}: expected a list of {args[0].__name__}")
        return [_convert(item, args[0], f"{key}[{i}]", source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} = {value!r}: expected a mapping")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} = {value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} = {value!r}: expected an integer")
        return value
    if hint is float:
        # PyYAML reads `1e-3` (no dot) as a string: accept any number written as text.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} = {value!r}: expected a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            raise UserError(f"{where}: expected a finite number, got an integer of {len(str(value))} digits") from None
        if not math.isfinite(value):
            raise UserError(f"{where} = {value!r}: expected a finite number")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where} = {value!r}: expected a string")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} for {key}")


def _shown(value: Any, limit: int = 80) -> str:
    """A value's repr for a one-line message, cut when long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} characters)"


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _did_you_mean(word: str, options: list[str], prefix: str = "") -> str:
    """"; did you mean 'X'?" for the nearest option, or "" when none is near."""
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean '{_join(prefix, close[0])}'?" if close else ""


# --------------------------------------------------------------------------- validation


class _Checker:
    """Collects the first failed check as a UserError naming key, value and rule."""

    def __init__(self, config: Config, source: str):
        self.config, self.source = config, source

    def require(self, ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise UserError(f"{self.source}: {key} = {_shown(get_key(self.config, key))}: {expected}")

    def one_of(self, key: str, allowed: tuple) -> None:
        value = get_key(self.config, key)
        if value not in allowed:
            hint = _did_you_mean(str(value), [str(a) for a in allowed])
            raise UserError(f"{self.source}: {key} = {value!r}: expected one of "
                            f"{', '.join(map(str, allowed))}{hint}")

    def positive(self, *keys: str) -> None:
        for key in keys:
            self.require(get_key(self.config, key) > 0, key, "must be > 0")

    def non_negative(self, *keys: str) -> None:
        for key in keys:
            self.require(get_key(self.config, key) >= 0, key, "must be >= 0")

    def rate(self, *keys: str) -> None:
        for key in keys:
            self.require(0.0 <= get_key(self.config, key) <= 1.0, key, "must be in [0, 1]")


def validate(config: Config, source: str = "config") -> None:
    """Check ranges and consistency between keys; raise UserError on the first problem."""
    check = _Checker(config, source)
    check.require(0 <= config.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}]")
    _validate_device(check)
    _validate_data(check)
    _validate_model(check)
    _validate_training(check)
    _validate_evolutionary(check)
    check.one_of("evaluation.split", ("train", "val", "test"))  # runs.SPLITS
    check.positive("evaluation.bins")
    check.non_negative("evaluation.boundary_tolerance")
    check.one_of("evaluation.calibration", CALIBRATIONS)


def _validate_device(check: _Checker) -> None:
    device = check.config.device
    ok = device in ("auto", "cpu", "cuda") or (
        device.startswith("cuda:") and device[5:].isdigit())
    check.require(ok, "device", "expected auto, cpu, cuda or cuda:N")


def _validate_data(check: _Checker) -> None:
    data = check.config.data
    check.one_of("data.dataset", DATASETS)
    check.one_of("data.task", TASKS)
    allowed = TASKS_OF_DATASET[data.dataset]
    check.require(data.task in allowed, "data.task",
                  f"dataset '{data.dataset}' offers {', '.join(allowed)}")
    check.require(data.dataset != "npz" or bool(data.path), "data.path",
                  "dataset 'npz' needs the path of an .npz file with X and Y")
    if data.num_classes is not None:
        check.require(data.num_classes >= 2, "data.num_classes", "must be >= 2 (or null)")
    check.one_of("data.format", ("NTHWC", "NTCHW"))
    for key in ("data.root", "data.path"):
        _validate_path(check, key)
    check.require(data.T_window >= 2, "data.T_window", "must be >= 2 (temporal links and the consistency "
                  "term compare consecutive frames)")
    check.positive("data.stride")
    check.require(len(data.splits) == 3 and all(f >= 0 for f in data.splits)
                  and abs(sum(data.splits) - 1.0) < 1e-6 and data.splits[0] > 0,
                  "data.splits", "expected three fractions [train, val, test] summing to 1, train > 0")
    for i, name in enumerate(data.static_features):
        check.require(name in STATIC_FEATURES, "data.static_features",
                      f"item {i} {name!r} is not one of {', '.join(STATIC_FEATURES)}")
    check.require(len(set(data.static_features)) == len(data.static_features),
                  "data.static_features", "lists a feature twice")

    gen = "data.generator"
    check.positive(f"{gen}.num_sequences", f"{gen}.sequence_length", f"{gen}.height", f"{gen}.width")
    if data.dataset != "npz":
        g = data.generator
        require_memory(g.num_sequences * g.sequence_length * g.height * g.width * GENERATOR_BYTES_PER_PIXEL,
                       f"{check.source}: data.generator (num_sequences {g.num_sequences} x sequence_length "
                       f"{g.sequence_length} x {g.height} x {g.width}): generating the {data.dataset} data")
    if data.dataset != "npz":
        check.require(data.T_window <= data.generator.sequence_length, "data.T_window",
                      f"must be <= data.generator.sequence_length "
                      f"({data.generator.sequence_length}), the frames in a sequence")
    check.positive(f"{gen}.storms.num_cells", f"{gen}.digits.num_digits", f"{gen}.digits.digit_scale")
    check.non_negative(f"{gen}.storms.noise_std", f"{gen}.digits.noise_std", f"{gen}.regimes.noise_std")
    check.rate(f"{gen}.storms.clutter_fraction", f"{gen}.regimes.stay_prob")
    check.require(2 <= data.generator.regimes.num_regimes <= 4, f"{gen}.regimes.num_regimes",
                  "must be 2, 3 or 4")
    if data.dataset == "digits":
        side = 8 * data.generator.digits.digit_scale
        check.require(side < min(data.generator.height, data.generator.width),
                      f"{gen}.digits.digit_scale",
                      f"a digit of {side}x{side} pixels must fit inside the "
                      f"{data.generator.height}x{data.generator.width} canvas")

    aug = "data.augmentations"
    for i, degrees in enumerate(data.augmentations.rotate_deg):
        check.require(degrees in (0, 90, 180, 270), f"{aug}.rotate_deg",
                      f"item {i} ({degrees}) must be one of 0, 90, 180, 270")
    check.non_negative(f"{aug}.temporal_jitter", f"{aug}.cutout_size", f"{aug}.gaussian_noise_std")


def _validate_path(check: _Checker, key: str) -> None:
    value = get_key(check.config, key)
    if value is None:
        return
    check.require("\0" not in value, key, "holds a NUL character; expected a file system path")
    check.require(0 < len(value.encode()) <= MAX_PATH, key, f"expected a path of 1 to {MAX_PATH} bytes")
    check.require(all(len(part.encode()) <= 255 for part in value.split("/")), key,
                  "has a name longer than 255 bytes; expected a file system path")


def _validate_model(check: _Checker) -> None:
    lstm = check.config.model.convlstm
    check.positive("model.convlstm.num_layers")
    check.require(len(lstm.hidden_sizes) == lstm.num_layers, "model.convlstm.hidden_sizes",
                  f"needs one size per layer (model.convlstm.num_layers = {lstm.num_layers})")
    check.require(all(h > 0 for h in lstm.hidden_sizes), "model.convlstm.hidden_sizes",
                  "sizes must be > 0")
    check.require(lstm.kernel_size > 0 and lstm.kernel_size % 2 == 1, "model.convlstm.kernel_size",
                  "must be an odd positive integer (same padding needs a centre)")
    check.require(0.0 <= lstm.dropout < 1.0, "model.convlstm.dropout", "must be in [0, 1)")
    check.one_of("model.pgm.type", PGM_TYPES)
    check.non_negative("model.pgm.pairwise_weight", "model.pgm.l2", "model.pgm.pseudo_count")
    check.positive("model.pgm.mean_field_iters", "model.pgm.fit_steps", "model.pgm.fit_lr")
    check.one_of("model.pgm.neighbourhood", (4, 8))
    check.one_of("model.pgm.compatibility", ("potts", "learned"))
    check.one_of("model.pgm.fit", ("mle", "em"))
    check.require(check.config.model.pgm.fit == "mle" or check.config.model.pgm.type == "hmm",
                  "model.pgm.fit", "em (Baum-Welch) applies to model.pgm.type = hmm only; use mle")


def _validate_training(check: _Checker) -> None:
    check.one_of("training.optimizer", ("adamw",))
    check.positive("training.lr", "training.batch_size", "training.epochs",
                   "training.early_stopping_patience", "training.joint.epochs", "training.joint.lr")
    check.one_of("training.joint.mode", JOINT_MODES)
    check.one_of("loss.unary", UNARY_LOSSES)
    check.non_negative("training.weight_decay", "training.grad_clip", "training.warmup_epochs",
                       "loss.alpha_unary", "loss.beta_structured", "loss.gamma_consistency")


def _validate_evolutionary(check: _Checker) -> None:
    evo = check.config.evolutionary
    check.positive("evolutionary.population_size", "evolutionary.generations",
                   "evolutionary.tournament_k", "evolutionary.low_fidelity.downsample_factor",
                   "evolutionary.low_fidelity.max_epochs")
    check.non_negative("evolutionary.elitism")
    check.require(evo.elitism < evo.population_size, "evolutionary.elitism",
                  f"must be < evolutionary.population_size ({evo.population_size})")
    check.rate("evolutionary.mutation_rate", "evolutionary.crossover_rate")
    check.positive("evolutionary.n_islands", "evolutionary.migration_interval", "evolutionary.trial_timeout_s",
                   "evolutionary.stagnation.generations", "evolutionary.stagnation.mutation_boost",
                   "evolutionary.cmaes.population_size", "evolutionary.cmaes.generations",
                   "evolutionary.cmaes.sigma", "evolutionary.cmaes.batch_windows")
    check.non_negative("evolutionary.migrants", "evolutionary.trial_retries", "evolutionary.low_fidelity.generations",
                       "evolutionary.stagnation.immigrants")
    check.require(evo.low_fidelity.generations < evo.generations, "evolutionary.low_fidelity.generations",
                  f"must be < evolutionary.generations ({evo.generations}): the last generations run at "
                  "full fidelity")
    check.require(evo.migrants < evo.population_size, "evolutionary.migrants",
                  f"must be < evolutionary.population_size ({evo.population_size})")
    check.require(evo.stagnation.immigrants < evo.population_size, "evolutionary.stagnation.immigrants",
                  f"must be < evolutionary.population_size ({evo.population_size})")
    check.require(1 <= len(evo.objectives) <= MAX_OBJECTIVES and len(set(evo.objectives)) == len(evo.objectives),
                  "evolutionary.objectives", f"expected 1 to {MAX_OBJECTIVES} different objectives")
    for i, name in enumerate(evo.objectives):
        check.require(name in OBJECTIVES, "evolutionary.objectives",
                      f"item {i} {name!r} is not one of {', '.join(OBJECTIVES)}")
    check.require(evo.devices is None or (len(evo.devices) > 0 and all(d >= 0 for d in evo.devices)),
                  "evolutionary.devices", "expected null (every visible GPU) or a list of GPU indices")
    check.one_of("evolutionary.cmaes.objective", CMAES_OBJECTIVES)
    check.one_of("evolutionary.cmaes.covariance", ("auto", "full", "diagonal"))
    check.require(len(evo.cmaes.groups) > 0, "evolutionary.cmaes.groups", "expected at least one group")
    for key, spec in evo.search_space.items():
        _validate_gene(check.source, str(key), spec)


def _validate_gene(source: str, key: str, spec: Any) -> None:
    """One `search_space` entry: a `choice` list or an int/float range."""
    where = f"{source}: evolutionary.search_space.{key}"
    keys = leaf_keys()
    if key not in keys:
        raise UserError(f"{where}: '{key}' is not a config key{_did_you_mean(key, list(keys))}")
    if key.startswith("evolutionary.") or key in ("seed", "device"):
        raise UserError(f"{where}: '{key}' cannot be evolved")
    if not isinstance(spec, dict):
        raise UserError(f"{where} = {spec!r}: expected {{choice: [...]}} or "
                        "{type: int|float, low: ..., high: ..., log: false}")
    if "choice" in spec:
        extra = set(spec) - {"choice"}
        if extra:
            raise UserError(f"{where}: unknown field(s) {sorted(extra)} next to 'choice'")
        if not isinstance(spec["choice"], list) or not spec["choice"]:
            raise UserError(f"{where}.choice = {spec['choice']!r}: expected a non-empty list")
        return
    extra = set(spec) - {"type", "low", "high", "log"}
    if extra:
        raise UserError(f"{where}: unknown field(s) {sorted(extra)}; expected type, low, high, log")
    if spec.get("type") not in ("int", "float"):
        raise UserError(f"{where}.type = {spec.get('type')!r}: expected int or float (or use choice)")
    for bound in ("low", "high"):
        value = spec.get(bound)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}.{bound} = {value!r}: expected a number")
    if spec["low"] > spec["high"]:
        raise UserError(f"{where}: low ({spec['low']}) is greater than high ({spec['high']})")
    if spec.get("log", False) and spec["low"] <= 0:
        raise UserError(f"{where}: log: true needs low > 0, got {spec['low']}")
