"""Ranges and consistency of a config's values: the first problem is a UserError naming the key,
the value and what is allowed."""

from __future__ import annotations

from typing import Any

from regimen.core.config import (ARCHIVES, CALIBRATIONS, CMAES_OBJECTIVES, CRF_INFERENCE, DATASETS, FILE_DATASETS,
                                 FORECASTERS, GENERATOR_BYTES_PER_PIXEL, JOINT_MODES, LOADER_START_METHODS,
                                 MAX_OBJECTIVES, MAX_SEED, MISSING, NEXT_FRAME, OBJECTIVES, PGM_TYPES, SPLIT_BY,
                                 STATIC_FEATURES, TASKS, TASKS_OF_DATASET, UNARY_LOSSES, USE_PGM, Config, DataConfig,
                                 get_key, leaf_keys)
from regimen.core.conversion import did_you_mean, shown
from regimen.core.errors import UserError
from regimen.core.machine import path_problem, require_memory


class _Checker:
    """Collects the first failed check as a UserError naming key, value and rule."""

    def __init__(self, config: Config, source: str):
        self.config, self.source = config, source

    def require(self, ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise UserError(f"{self.source}: {key} = {shown(get_key(self.config, key))}: {expected}")

    def one_of(self, key: str, allowed: tuple) -> None:
        value = get_key(self.config, key)
        if value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
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
    check.require(config.threads is None or config.threads >= 1, "threads", "must be >= 1 (or null: the cores "
                  "this process may use)")
    check.positive("progress_interval_s")
    _validate_device(check)
    _validate_data(check)
    _validate_model(check)
    _validate_training(check)
    _validate_forecast(check)
    _validate_evolutionary(check)
    check.one_of("evaluation.split", ("train", "val", "test"))  # runs.SPLITS
    check.positive("evaluation.bins")
    check.non_negative("evaluation.boundary_tolerance")
    check.one_of("evaluation.calibration", CALIBRATIONS)
    data = check.config.data
    check.require(not check.config.evaluation.stateful or data.stride <= data.T_window, "evaluation.stateful",
                  f"carries the state from window to window, which needs windows that cover each sequence: "
                  f"data.stride ({data.stride}) <= data.T_window ({data.T_window})")
    check.require(not (check.config.evaluation.stateful and check.config.model.convlstm.bidirectional),
                  "evaluation.stateful", "a bidirectional ConvLSTM also reads each window backwards, so it cannot "
                  "carry its state from one window to the next: set model.convlstm.bidirectional off")
    check.one_of("evaluation.use_pgm", USE_PGM)
    evaluation = check.config.evaluation
    check.require(len(set(evaluation.thresholds)) == len(evaluation.thresholds), "evaluation.thresholds",
                  "lists a threshold twice")
    check.require(bool(evaluation.scales) and all(scale >= 1 for scale in evaluation.scales), "evaluation.scales",
                  "expected FSS window sizes in pixels, each >= 1")


def _validate_device(check: _Checker) -> None:
    device = check.config.device
    ok = device in ("auto", "cpu", "cuda") or (
        device.startswith("cuda:") and device[5:].isdigit())
    check.require(ok, "device", "expected auto, cpu, cuda or cuda:N")


def _validate_data(check: _Checker) -> None:
    _validate_source(check)
    _validate_windows_and_splits(check)
    _validate_generator(check)
    _validate_augmentations(check)


def _validate_source(check: _Checker) -> None:
    """What the data is and where: dataset, task, path, layout, labels."""
    data = check.config.data
    check.one_of("data.dataset", DATASETS)
    check.one_of("data.task", TASKS)
    allowed = TASKS_OF_DATASET[data.dataset]
    check.require(data.task in allowed, "data.task",
                  f"dataset '{data.dataset}' offers {', '.join(allowed)}")
    check.require(data.dataset != "npz" or bool(data.path), "data.path",
                  "dataset 'npz' needs the path of an .npz file with X and Y")
    check.require(data.dataset not in ARCHIVES or bool(data.path), "data.path",
                  f"dataset '{data.dataset}' needs the path of the archive: a file, a folder or a glob")
    if data.num_classes is not None:
        check.require(data.num_classes >= 2, "data.num_classes", "must be >= 2 (or null)")
    if data.dataset == "hdf5":
        letters = data.format
        check.require(sorted(letters) in (sorted("NTHWC"), sorted("NTHW"), sorted("THWC"), sorted("THW")),
                      "data.format", "expected the axis order of the inputs: T, H, W, optional N (sequences) "
                      "and C (channels), each once, e.g. NTHWC or NHWT")
    else:
        check.one_of("data.format", ("NTHWC", "NTCHW"))
    if data.labels == NEXT_FRAME:
        check.require(data.task == "regression", "data.labels", "next_frame targets the next frame: "
                      "data.task regression")
    check.require(data.dataset not in ARCHIVES or data.labels is not None, "data.labels",
                  "expected the labels' dataset, variable or folder, or next_frame")
    for key in ("data.root", "data.path"):
        _validate_path(check, key)


def _validate_windows_and_splits(check: _Checker) -> None:
    """How phase 0 cuts the data: loader, windows, splits, missing values, static features."""
    data = check.config.data
    check.non_negative("data.loader.workers")
    check.positive("data.loader.prefetch")
    check.one_of("data.loader.start_method", LOADER_START_METHODS)
    check.require(data.T_window >= 2, "data.T_window", "must be >= 2 (temporal links and the consistency "
                  "term compare consecutive frames)")
    check.positive("data.stride")
    check.require(len(data.splits) == 3 and all(f >= 0 for f in data.splits)
                  and abs(sum(data.splits) - 1.0) < 1e-6 and data.splits[0] > 0,
                  "data.splits", "expected three fractions [train, val, test] summing to 1, train > 0")
    check.one_of("data.split_by", SPLIT_BY)
    check.require(not data.split_times or (data.split_by == "time" and len(data.split_times) == 2),
                  "data.split_times", "expected two times, the start of val and the start of test, with "
                  "data.split_by: time (or [] to cut at data.splits of the frames in time order)")
    check.non_negative("data.split_gap")
    check.require(data.split_gap == 0 or data.split_by == "time", "data.split_gap",
                  "leaves frames out at the cuts of data.split_by: time")
    check.one_of("data.missing", MISSING)
    check.require(data.mask is None or data.dataset in ("hdf5", "xarray"), "data.mask",
                  "names the HDF5 dataset or xarray variable of the observed pixels (data.dataset hdf5 or xarray)")
    check.require(data.ignore_label is None or data.task != "regression", "data.ignore_label",
                  "marks class labels; regression targets mark missing values as NaN (data.missing: mask)")
    check.require(data.times is None or data.dataset == "hdf5", "data.times",
                  "names the HDF5 dataset of the frames' times (data.dataset: hdf5); xarray reads the time "
                  "coordinate data.dims.time, a catalog its data.catalog.time column")
    for i, name in enumerate(data.static_features):
        check.require(name in STATIC_FEATURES, "data.static_features",
                      f"item {i} {name!r} is not one of {', '.join(STATIC_FEATURES)}")
    check.require(len(set(data.static_features)) == len(data.static_features),
                  "data.static_features", "lists a feature twice")


def _validate_generator(check: _Checker) -> None:
    """The built-in generators' sizes (and the memory they take) and knobs."""
    data = check.config.data
    gen = "data.generator"
    check.positive(f"{gen}.num_sequences", f"{gen}.sequence_length", f"{gen}.height", f"{gen}.width")
    if data.dataset not in FILE_DATASETS:
        g = data.generator
        require_memory(g.num_sequences * g.sequence_length * g.height * g.width * GENERATOR_BYTES_PER_PIXEL,
                       f"{check.source}: data.generator (num_sequences {g.num_sequences} x sequence_length "
                       f"{g.sequence_length} x {g.height} x {g.width}): generating the {data.dataset} data")
    if data.dataset not in FILE_DATASETS and not data.forecast:
        check.require(data.T_window <= data.generator.sequence_length, "data.T_window",
                      f"must be <= data.generator.sequence_length "
                      f"({data.generator.sequence_length}), the frames in a sequence")
    check.positive(f"{gen}.storms.num_cells", f"{gen}.digits.num_digits", f"{gen}.digits.digit_scale")
    check.non_negative(f"{gen}.storms.noise_std", f"{gen}.digits.noise_std", f"{gen}.regimes.noise_std")
    check.rate(f"{gen}.storms.clutter_fraction", f"{gen}.regimes.stay_prob")
    check.require(2 <= data.generator.regimes.num_regimes <= 4, f"{gen}.regimes.num_regimes",
                  "must be 2, 3 or 4")
    if data.dataset == "mmnist":
        check.require(min(data.generator.height, data.generator.width) > 28, f"{gen}.height",
                      f"Moving MNIST's 28 x 28 digits need room to move: height and width > 28 (standard: 64), "
                      f"got {data.generator.height} x {data.generator.width}")
        check.require(data.split_by == "sequence", "data.split_by", "mmnist deals its digits to the splits by "
                      "sequence: expected sequence")
    check.positive(f"{gen}.mmnist.num_digits", f"{gen}.mmnist.step")
    if data.dataset == "digits":
        side = 8 * data.generator.digits.digit_scale
        check.require(side < min(data.generator.height, data.generator.width),
                      f"{gen}.digits.digit_scale",
                      f"a digit of {side}x{side} pixels must fit inside the "
                      f"{data.generator.height}x{data.generator.width} canvas")


def _validate_augmentations(check: _Checker) -> None:
    data = check.config.data
    aug = "data.augmentations"
    for i, degrees in enumerate(data.augmentations.rotate_deg):
        check.require(degrees in (0, 90, 180, 270), f"{aug}.rotate_deg",
                      f"item {i} ({degrees}) must be one of 0, 90, 180, 270")
    check.non_negative(f"{aug}.temporal_jitter", f"{aug}.cutout_size", f"{aug}.gaussian_noise_std")


def _validate_path(check: _Checker, key: str) -> None:
    value = get_key(check.config, key)
    if value is None:
        return
    problem = path_problem(value)
    check.require(problem is None, key, problem or "")


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
    check.positive("model.convlstm.patch_size")
    check.one_of("model.pgm.type", PGM_TYPES)
    check.non_negative("model.pgm.pairwise_weight", "model.pgm.l2", "model.pgm.pseudo_count")
    check.positive("model.pgm.mean_field_iters", "model.pgm.fit_steps", "model.pgm.fit_lr")
    check.one_of("model.pgm.neighbourhood", (4, 8))
    check.one_of("model.pgm.inference", CRF_INFERENCE)
    check.require(0.0 <= check.config.model.pgm.damping < 1.0, "model.pgm.damping", "must be in [0, 1)")
    check.one_of("model.pgm.compatibility", ("potts", "learned"))
    check.one_of("model.pgm.fit", ("mle", "em"))
    check.one_of("model.pgm.emission", ("prior", "predictive"))
    check.one_of("model.pgm.decoding", ("viterbi", "marginals"))
    check.require(check.config.model.pgm.fit == "mle" or check.config.model.pgm.type == "hmm",
                  "model.pgm.fit", "em (Baum-Welch) applies to model.pgm.type = hmm only; use mle")


def _validate_training(check: _Checker) -> None:
    check.one_of("training.optimizer", ("adamw",))
    check.positive("training.lr", "training.batch_size", "training.accumulate", "training.epochs",
                   "training.early_stopping_patience", "training.joint.epochs", "training.joint.lr")
    check.one_of("training.joint.mode", JOINT_MODES)
    training = check.config.training
    check.require(training.accumulate <= training.batch_size, "training.accumulate",
                  f"must be <= training.batch_size ({training.batch_size}): each micro-batch needs a window")
    check.one_of("loss.unary", UNARY_LOSSES)
    check.non_negative("training.weight_decay", "training.grad_clip", "training.warmup_epochs",
                       "loss.alpha_unary", "loss.beta_structured", "loss.gamma_consistency")
    if training.stateful:
        _validate_stateful_training(check)


def _validate_stateful_training(check: _Checker) -> None:
    """Truncated BPTT hands a window's final state to its sequence's next window: the windows must
    tile their sequences, in one direction, and keep their frames where they are."""
    config, data = check.config, check.config.data
    check.require(data.stride == data.T_window, "training.stateful",
                  f"starts each window from the state its sequence's previous window ended with, so windows "
                  f"must tile the sequences: set data.stride ({data.stride}) = data.T_window ({data.T_window})")
    off = {"model.convlstm.bidirectional": "a bidirectional ConvLSTM also reads each window backwards",
           "data.forecast": "each forecast starts from its own T_in frames",
           "data.augmentations.temporal_jitter": "a shifted window no longer ends where the next one starts"}
    for key, reason in off.items():
        check.require(not get_key(config, key), "training.stateful", f"{reason}: set {key} off")


def can_feed_back(data: DataConfig) -> bool:
    """Whether the autoregressive forecaster can serve the data: a forecast whose targets are the
    inputs (regression of `next_frame` or a built-in dataset, no static features)."""
    return bool(data.forecast) and data.task == "regression" and not data.static_features and (
        data.dataset not in FILE_DATASETS or data.labels == NEXT_FRAME)


def _validate_forecast(check: _Checker) -> None:
    """`data.forecast` and what a forecast cannot go with: the network reads the first T_in frames
    of a window and predicts the last T_out, so nothing may look at (or shift) the frames between."""
    config = check.config
    data, lstm = config.data, config.model.convlstm
    check.one_of("model.convlstm.forecaster", FORECASTERS)
    check.rate("training.scheduled_sampling.start")
    check.non_negative("training.scheduled_sampling.decay_epochs")
    if data.forecast is None:
        check.require(lstm.forecaster != "autoregressive", "model.convlstm.forecaster",
                      "the autoregressive forecaster predicts future frames: set data.forecast "
                      "{input_frames: T_in, output_frames: T_out}")
        return
    check.positive("data.forecast.input_frames")
    check.require(data.forecast.output_frames >= 2, "data.forecast.output_frames",
                  "must be >= 2 (the PGMs' temporal links and the consistency term compare consecutive frames)")
    if data.dataset not in FILE_DATASETS:
        check.require(data.window <= data.generator.sequence_length, "data.forecast.input_frames",
                      f"input_frames + output_frames ({data.window}) must be <= data.generator.sequence_length "
                      f"({data.generator.sequence_length}), the frames in a sequence")
    off = {"data.augmentations.temporal_jitter": "shifts frames across the line between inputs and targets: "
           "set it to 0", "evaluation.stateful": "each forecast starts from its own T_in frames: set it to false",
           "model.convlstm.bidirectional": "a forecast cannot read its inputs backwards from the future: set it "
           "to false", "model.pgm.edge_aware": "weighs a frame's CRF edges by that frame's inputs, which a "
           "forecast never sees: set it to false"}
    for key, reason in off.items():
        check.require(not get_key(config, key), key, f"with data.forecast, {reason}")
    if lstm.forecaster == "autoregressive":
        check.require(can_feed_back(data), "model.convlstm.forecaster",
                      "autoregressive feeds each predicted frame back as the next input, so its targets must be "
                      "the inputs: data.task regression with data.labels next_frame (or a built-in dataset) and "
                      "no data.static_features; use encoder_forecaster")


def _validate_evolutionary(check: _Checker) -> None:
    evo = check.config.evolutionary
    check.positive("evolutionary.population_size", "evolutionary.generations",
                   "evolutionary.tournament_k", "evolutionary.low_fidelity.downsample_factor",
                   "evolutionary.low_fidelity.max_epochs")
    check.non_negative("evolutionary.elitism")
    check.require(evo.elitism < evo.population_size, "evolutionary.elitism",
                  f"must be < evolutionary.population_size ({evo.population_size})")
    check.rate("evolutionary.mutation_rate", "evolutionary.crossover_rate")
    check.positive("evolutionary.gpus_per_trial", "evolutionary.n_islands", "evolutionary.migration_interval", "evolutionary.trial_timeout_s",
                   "evolutionary.stagnation.generations", "evolutionary.stagnation.mutation_boost",
                   "evolutionary.cmaes.population_size", "evolutionary.cmaes.generations",
                   "evolutionary.cmaes.sigma", "evolutionary.cmaes.batch_windows")
    check.non_negative("evolutionary.migrants", "evolutionary.trial_retries", "evolutionary.low_fidelity.generations",
                       "evolutionary.stagnation.immigrants")
    check.require(evo.mode == "steady_state" or evo.low_fidelity.generations < evo.generations,
                  "evolutionary.low_fidelity.generations",
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
    check.one_of("evolutionary.mode", ("generational", "steady_state"))
    check.one_of("evolutionary.fidelity", ("generations", "halving"))
    check.require(evo.halving.eta >= 2, "evolutionary.halving.eta", "expected an integer >= 2")
    check.require(evo.halving.rungs >= 2, "evolutionary.halving.rungs", "expected an integer >= 2")
    check.require(evo.mode == "generational" or evo.n_islands == 1, "evolutionary.n_islands",
                  "steady_state mode evolves one population: expected 1 (or evolutionary.mode: generational)")
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
        raise UserError(f"{where}: '{key}' is not a config key{did_you_mean(key, list(keys))}")
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
