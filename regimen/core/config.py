"""The one config: typed sections with their defaults, and its canonical forms (dict, YAML, hash).

Reading a file is `regimen.core.config_file.load_config`; checking values is
`regimen.core.validation.validate`. Every section is a plain dataclass; `from_dict`
converts a mapping to them (`regimen.core.conversion`), refusing unknown keys and
wrong types with a "did you mean" for near misses.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from regimen.core.conversion import convert, fields_of

ARCHIVES = ("hdf5", "xarray", "frames")  # read lazily, sequence by sequence, from files larger than memory
FILE_DATASETS = ("npz", *ARCHIVES)  # the user's own data, read from data.path
DATASETS = ("storms", "digits", "regimes", "mmnist", *FILE_DATASETS)
TASKS = ("segmentation", "tagging", "regression")
TASKS_OF_DATASET = {
    "storms": ("segmentation", "regression"),
    "digits": ("segmentation", "tagging", "regression"),
    "regimes": ("tagging",),
    "mmnist": ("regression",),
    "npz": TASKS,
    "hdf5": TASKS,
    "xarray": TASKS,
    "frames": ("segmentation", "regression"),
}
NEXT_FRAME = "next_frame"  # data.labels: the inputs' next frame is the target (regression, nowcasting)
LOADER_START_METHODS = ("spawn", "forkserver")  # fork after threads deadlocks with HDF5 and Zarr
STATIC_FEATURES = ("edges", "motion", "mask")
SPLIT_BY = ("sequence", "time")
FORECASTERS = ("encoder_forecaster", "autoregressive")
MISSING = ("refuse", "mask")
PGM_TYPES = ("crf", "hmm", "chain_crf")
CRF_INFERENCE = ("mean_field", "loopy_bp")
JOINT_MODES = ("alternating", "end_to_end")
UNARY_LOSSES = ("auto", "ce", "kl", "mse", "l1")
CALIBRATIONS = ("auto", "temperature", "isotonic", "none")
USE_PGM = ("auto", "always", "never")
# What a trial can be selected on (evaluate.py's validation metrics), and whether higher is better;
# `metric` is the task's main metric (mIoU, accuracy or RMSE).
OBJECTIVES = {"metric": None, "ece": False, "nll": False, "boundary_f1": True, "flicker": False,
              "latency": False, "memory": False, "parameters": False}
CMAES_OBJECTIVES = ("kl", "nll", "metric")
# What evolve.py searches when the config names no search space (config.yaml spells it out).
DEFAULT_SEARCH_SPACE = {
    "model.convlstm.num_layers": {"type": "int", "low": 1, "high": 3},
    "model.convlstm.kernel_size": {"choice": [3, 5]},
    "model.convlstm.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 2.0},
    "model.pgm.mean_field_iters": {"type": "int", "low": 1, "high": 8},
    "training.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "loss.beta_structured": {"type": "float", "low": 0.0, "high": 1.0},
}
MAX_OBJECTIVES = 5  # evolutionary.objectives: DEAP fitness classes are made for 1 to this many
MAX_SEED = 2 ** 31 - 1  # numpy's legacy seeding takes < 2**32, and phases add small offsets to the seed
MAX_YAML_NODES = 100_000  # a config is a few hundred; an alias bomb expands to billions
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
class MovingMNISTConfig:
    num_digits: int = 2  # MNIST digits (28 x 28) moving on each canvas
    step: float = 0.1  # distance a frame, as a fraction of the room (canvas less the digit)


@dataclass
class GeneratorConfig:
    num_sequences: int = 64  # sequences generated before splitting
    sequence_length: int = 24  # frames per sequence
    height: int = 32  # grid rows
    width: int = 32  # grid columns
    storms: StormsConfig = field(default_factory=StormsConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)
    regimes: RegimesConfig = field(default_factory=RegimesConfig)
    mmnist: MovingMNISTConfig = field(default_factory=MovingMNISTConfig)


@dataclass
class AugmentationConfig:
    spatial_flip: bool = True
    rotate_deg: list[int] = field(default_factory=lambda: [0, 90, 180, 270])
    temporal_jitter: int = 0
    cutout_size: int = 0
    gaussian_noise_std: float = 0.01


@dataclass
class CatalogConfig:
    path: Optional[str] = None  # CSV with one event (sequence) per row; file names relative to data.path
    file: str = "file"  # column: the HDF5 file of the event
    index: str = "index"  # column: the event's index along the file's N axis
    time: Optional[str] = None  # column: the event's start time (ISO 8601)


@dataclass
class DimsConfig:
    time: str = "time"
    y: str = "y"
    x: str = "x"
    channel: Optional[str] = None  # null: one channel
    sequence: Optional[str] = None  # null: each file is one sequence


@dataclass
class LoaderConfig:
    workers: int = 0  # DataLoader worker processes reading windows; 0: read in the training process
    start_method: str = "spawn"  # spawn | forkserver: how workers start
    prefetch: int = 2  # batches each worker reads ahead


@dataclass
class ForecastConfig:
    input_frames: int = 5  # T_in: the frames the network reads
    output_frames: int = 5  # T_out: the frames after them that it predicts


@dataclass
class DataConfig:
    root: str = "./data"
    dataset: str = "storms"
    task: str = "segmentation"
    path: Optional[str] = None
    num_classes: Optional[int] = None
    format: str = "NTHWC"  # axis order of the inputs (npz: NTHWC | NTCHW; hdf5: N, T, H, W and C in any order)
    inputs: str = "X"  # hdf5 dataset or xarray variable of the inputs
    labels: Optional[str] = "Y"  # dataset / variable / frames: label folder beside data.path; next_frame
    soft_targets: Optional[str] = None  # hdf5 dataset or xarray variable of class distributions
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    dims: DimsConfig = field(default_factory=DimsConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    T_window: int = 8
    stride: int = 4
    forecast: Optional[ForecastConfig] = None  # T_in past frames to T_out future frames; null: label the window
    normalize: bool = True
    splits: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    split_by: str = "sequence"  # sequence (whole sequences at random) | time (cut in time order)
    split_times: list[str] = field(default_factory=list)  # split_by time: [val start, test start]; []: splits
    split_gap: int = 0  # split_by time: distinct times before each cut left out of both sides
    mask: Optional[str] = None  # hdf5 dataset / xarray variable: 1 where a pixel (tagging: frame) is observed, 0 not
    missing: str = "refuse"  # NaN/Inf in the inputs or regression targets: refuse | mask (as missing pixels)
    ignore_label: Optional[int] = None  # a label value that marks a node as not scored (e.g. 255)
    times: Optional[str] = None  # hdf5: dataset of each frame's time, (T) or (N, T), numbers or ISO 8601 text
    static_features: list[str] = field(default_factory=list)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    augmentations: AugmentationConfig = field(default_factory=AugmentationConfig)

    @property
    def window(self) -> int:
        """Frames of a window: T_in + T_out for a forecast, else T_window."""
        return self.forecast.input_frames + self.forecast.output_frames if self.forecast else self.T_window

    @property
    def target_shift(self) -> int:
        """Frames from an input frame to its next-frame target (`next_frame`, the built-in regressions):
        1, or 0 in a forecast, whose targets are the future frames themselves."""
        return 0 if self.forecast else 1


@dataclass
class ConvLSTMConfig:
    num_layers: int = 2
    hidden_sizes: list[int] = field(default_factory=lambda: [16, 16])
    kernel_size: int = 3
    dropout: float = 0.1
    bidirectional: bool = False
    checkpoint_steps: bool = False  # recompute each time step in the backward pass: less memory, more time
    forecaster: str = "encoder_forecaster"  # data.forecast: encoder_forecaster | autoregressive
    patch_size: int = 1  # space to depth: p x p patches folded into channels (64x64x1 runs as 16x16x16 with 4)


@dataclass
class PGMConfig:
    type: str = "crf"
    pairwise_weight: float = 0.7
    temporal_links: bool = True
    mean_field_iters: int = 5
    neighbourhood: int = 4  # spatial neighbours of the CRF: 4 or 8
    inference: str = "mean_field"  # CRF marginals and decoding: mean_field | loopy_bp (sum- and max-product)
    damping: float = 0.0  # loopy-BP message damping in [0, 1): 0 plain updates
    edge_aware: bool = False  # CRF edges weaken where the input window (normalised) changes across them
    compatibility: str = "learned"  # potts | learned (a symmetric K x K matrix, Potts at the start)
    fit: str = "mle"  # mle (labelled: counts or gradient) | em (HMM: Baum-Welch, labels unused)
    fit_steps: int = 150  # gradient steps when fitting crf / chain_crf parameters
    fit_lr: float = 0.05  # Adam learning rate of those steps
    l2: float = 1.0e-3  # Gaussian prior (MAP) on crf / chain_crf parameters
    pseudo_count: float = 1.0  # HMM Dirichlet pseudo-counts (0: maximum likelihood)
    emission: str = "prior"  # HMM: posterior over the class prior | predictive (over the one-step prediction)
    decoding: str = "viterbi"  # HMM, chain CRF: viterbi (the likeliest path) | marginals (each node's likeliest label)


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
class SamplingConfig:
    start: float = 1.0  # the chance of feeding the true frame instead of the prediction, at the start
    decay_epochs: int = 4  # epochs over which that chance falls linearly to 0


@dataclass
class TrainingConfig:
    optimizer: str = "adamw"
    lr: float = 2.0e-3
    weight_decay: float = 1.0e-2
    batch_size: int = 8  # the global batch: split over the processes of a torchrun job
    accumulate: int = 1  # micro-batches per process and step (gradient accumulation)
    epochs: int = 8
    warmup_epochs: int = 1
    grad_clip: float = 1.0
    mixed_precision: bool = True
    early_stopping_patience: int = 8
    save_feature_maps: bool = False  # features.pt also holds the last layer's feature maps
    stateful: bool = False  # truncated BPTT: a window starts from the state its sequence's previous window left
    joint: JointConfig = field(default_factory=JointConfig)
    scheduled_sampling: SamplingConfig = field(default_factory=SamplingConfig)  # the autoregressive forecaster


@dataclass
class LossConfig:
    unary: str = "auto"  # auto (ce, or mse for regression) | ce | kl (needs soft targets) | mse | l1 (regression)
    alpha_unary: float = 1.0
    beta_structured: float = 0.6
    gamma_consistency: float = 0.2


@dataclass
class LowFidelityConfig:
    generations: int = 1  # the first generations run at low fidelity; 0: never
    downsample_factor: int = 2
    max_epochs: int = 2


@dataclass
class HalvingConfig:
    eta: int = 3  # each rung keeps the best 1/eta of the one before and trains it eta times longer
    rungs: int = 3  # epoch budgets training.epochs / eta^(rungs-1), ..., training.epochs


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
    mode: str = "generational"  # generational | steady_state (a freed slot breeds the next child at once)
    fidelity: str = "generations"  # generations (low_fidelity's first generations) | halving (in every generation)
    n_islands: int = 1
    migration_interval: int = 2
    migrants: int = 1
    objectives: list[str] = field(default_factory=lambda: ["metric"])
    trial_joint: bool = False
    trial_timeout_s: float = 1800.0
    trial_retries: int = 1
    devices: Optional[list[int]] = None
    gpus_per_trial: int = 1  # GPUs of one trial; above 1 its training phases run under torchrun
    scheduler: Optional[str] = None
    low_fidelity: LowFidelityConfig = field(default_factory=LowFidelityConfig)
    halving: HalvingConfig = field(default_factory=HalvingConfig)
    stagnation: StagnationConfig = field(default_factory=StagnationConfig)
    cmaes: CMAESConfig = field(default_factory=CMAESConfig)
    search_space: dict[str, dict] = field(default_factory=lambda: copy.deepcopy(DEFAULT_SEARCH_SPACE))


@dataclass
class EvaluationConfig:
    split: str = "test"  # the split evaluate.py reports (export.py always calibrates on val, reports test)
    bins: int = 15  # equal-width confidence bins of ECE, MCE and the reliability curve
    boundary_tolerance: int = 1  # nodes a predicted boundary may be off and still count
    calibration: str = "auto"  # auto (lower val ECE) | temperature | isotonic | none
    use_pgm: str = "auto"  # auto (only when it beats the unaries on val) | always | never
    stateful: bool = False  # each window continues from the state its sequence's previous window left
    thresholds: list[float] = field(default_factory=list)  # forecast verification: events are values >= each
    scales: list[int] = field(default_factory=lambda: [1, 4, 16])  # FSS window sizes in pixels
    baselines: bool = True  # tagging: also report hmmlearn's Gaussian HMM and the per-frame Gaussian classifier


@dataclass
class Config:
    seed: int = 42
    device: str = "auto"
    threads: Optional[int] = None  # CPU threads of torch; None: the cores this process may use
    progress_interval_s: float = 30.0  # seconds between progress lines when stderr is no terminal
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    evolutionary: EvolutionaryConfig = field(default_factory=EvolutionaryConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# --------------------------------------------------------------------------- canonical forms


def from_dict(raw: dict, source: str = "config") -> Config:
    """Convert a plain mapping (missing keys take their defaults) to a `Config`."""
    return convert(raw, Config, "", source)


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
    for f, hint in fields_of(cls):
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
