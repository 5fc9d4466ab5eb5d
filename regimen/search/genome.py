"""The genome of evolve.py: `evolutionary.search_space` as typed genes, decoded to full configs.

A genome is a list with one value per gene, in the search space's order: an
int or a float inside the gene's range, or the index of a `choice`. Crossover
swaps whole genes and mutation stays inside each gene's type and bounds, so no
operator ever leaves the space. `decode` writes the values into the base
config and repairs what they make inconsistent (`num_layers` against
`hidden_sizes`, an even kernel size, a window longer than the sequences);
the repairs are reported, not hidden.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from regimen.core.config import FILE_DATASETS, Config, from_dict, get_key, to_dict
from regimen.core.errors import UserError
from regimen.core.validation import can_feed_back, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gene:
    """One evolvable config key: `kind` is int, float or choice."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    options: tuple = ()

    @classmethod
    def from_spec(cls, key: str, spec: dict) -> "Gene":
        if "choice" in spec:
            return cls(key, "choice", options=tuple(spec["choice"]))
        return cls(key, spec["type"], spec["low"], spec["high"], bool(spec.get("log", False)))

    def random(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.randrange(len(self.options))
        if self.kind == "int":
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            return self._clip(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return rng.uniform(self.low, self.high)

    def _clip(self, value: float) -> float:
        """Inside [low, high] also after the rounding of exp(log(x))."""
        return min(self.high, max(self.low, value))

    def mutate(self, value: Any, rng: random.Random) -> Any:
        """A nearby value (a Gaussian step of a fifth of the range, in log space when `log`),
        another option for a choice; always inside the bounds."""
        if self.kind == "choice":
            others = [i for i in range(len(self.options)) if i != value]
            return rng.choice(others) if others else value
        if self.kind == "int":
            step = max(1, round(abs(rng.gauss(0.0, 0.2 * (self.high - self.low)))))
            return int(min(self.high, max(self.low, value + rng.choice((-1, 1)) * step)))
        if self.log:
            low, high = math.log(self.low), math.log(self.high)
            return self._clip(math.exp(min(high, max(low, math.log(value) + rng.gauss(0.0, 0.2 * (high - low))))))
        return self._clip(value + rng.gauss(0.0, 0.2 * (self.high - self.low)))

    def decode(self, value: Any) -> Any:
        return self.options[value] if self.kind == "choice" else value

    def encode(self, value: Any, rng: random.Random) -> Any:
        """The gene value nearest to a config value (a random option when it is not one)."""
        if self.kind == "choice":
            return self.options.index(value) if value in self.options else rng.randrange(len(self.options))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.random(rng)
        value = self._clip(value)
        return int(round(value)) if self.kind == "int" else float(value)

    def position(self, value: Any) -> float:
        """The value as a fraction of the gene's range, for diversity."""
        if self.kind == "choice":
            return value / max(1, len(self.options) - 1)
        if self.high == self.low:
            return 0.0
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)


CRF_KEYS = {f"model.pgm.{key}" for key in ("pairwise_weight", "temporal_links", "mean_field_iters", "neighbourhood",
                                          "inference", "damping", "edge_aware", "compatibility")}
HMM_KEYS = {"model.pgm.pseudo_count", "model.pgm.fit"}


def idle_reason(key: str, config: Config) -> str:
    """Why a search-space key would change nothing in a trial ("" when it acts): a trial runs
    phases 1 and 2 (and phase 3 with `evolutionary.trial_joint`), then evaluates."""
    space, pgm = config.evolutionary.search_space, config.model.pgm.type
    if (key.startswith(("loss.", "training.joint.")) and key != "loss.unary"
            and not config.evolutionary.trial_joint):
        return "it acts in joint training (phase 3) only, which trials skip (evolutionary.trial_joint: false)"
    if key.startswith("model.pgm.") and config.data.task == "regression":
        return "task 'regression' has no PGM"
    if "model.pgm.type" not in space and ((key in CRF_KEYS and pgm != "crf") or (key in HMM_KEYS and pgm != "hmm")):
        return f"it does not act on model.pgm.type {pgm!r}"
    forecasting = key == "model.convlstm.forecaster" or key.startswith("training.scheduled_sampling.")
    if forecasting and not config.data.forecast:
        return "it acts on forecasts only (data.forecast)"
    if (key.startswith("training.scheduled_sampling.") and "model.convlstm.forecaster" not in space
            and config.model.convlstm.forecaster != "autoregressive"):
        return "it acts on the autoregressive forecaster only"
    return ""


def genes_of(config: Config, say: bool = False) -> list[Gene]:
    """The genes of the search-space keys that act in a trial (the config loader has checked every
    entry); `say`: log each key left out, and why."""
    space = config.evolutionary.search_space
    if not space:
        raise UserError("evolutionary.search_space is empty: add at least one key to evolve, e.g. "
                        "training.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    idle = {key: idle_reason(key, config) for key in space}
    if say:
        for key, reason in idle.items():
            if reason:
                log.info("evolutionary.search_space: %s is left out: %s", key, reason)
    genes = [Gene.from_spec(key, spec) for key, spec in space.items() if not idle[key]]
    if not genes:
        raise UserError(f"evolutionary.search_space: none of {', '.join(space)} acts in a trial "
                        f"({'; '.join(f'{k}: {r}' for k, r in idle.items())})")
    return genes


def incumbent(genes: list[Gene], base: Config, rng: random.Random) -> list:
    """The base config's own values as a genome, so the search starts from what the user has."""
    return [gene.encode(get_key(base, gene.key), rng) for gene in genes]


def decode(genes: list[Gene], genome: list, base: Config) -> tuple[Config, dict, list[str]]:
    """The full config of a genome, the values it set, and the repairs it needed."""
    raw = to_dict(base)
    values = {gene.key: gene.decode(value) for gene, value in zip(genes, genome)}
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    repairs = repair(raw, set(values))
    config = from_dict(raw, "genome")
    validate(config, f"genome {values}")
    return config, values, repairs


def repair(raw: dict, evolved: set[str]) -> list[str]:
    """Make evolved values consistent with the rest of the config, in place; say what changed."""
    repairs = []
    lstm = raw["model"]["convlstm"]
    if len(lstm["hidden_sizes"]) != lstm["num_layers"]:
        if "model.convlstm.num_layers" in evolved or "model.convlstm.hidden_sizes" not in evolved:
            sizes = list(lstm["hidden_sizes"])
            lstm["hidden_sizes"] = (sizes + [sizes[-1]] * lstm["num_layers"])[:lstm["num_layers"]]
            repairs.append(f"model.convlstm.hidden_sizes -> {lstm['hidden_sizes']} "
                           f"(num_layers {lstm['num_layers']})")
        else:
            lstm["num_layers"] = len(lstm["hidden_sizes"])
            repairs.append(f"model.convlstm.num_layers -> {lstm['num_layers']} (hidden_sizes)")
    if lstm["kernel_size"] % 2 == 0:
        lstm["kernel_size"] += 1
        repairs.append(f"model.convlstm.kernel_size -> {lstm['kernel_size']} (must be odd)")
    if lstm.get("forecaster") == "autoregressive" and not can_feed_back(from_dict(raw, "genome").data):
        lstm["forecaster"] = "encoder_forecaster"
        repairs.append("model.convlstm.forecaster -> encoder_forecaster (autoregressive feeds back the inputs "
                       "it predicts: a forecast of regression targets that are the inputs)")
    data = raw["data"]
    if data["dataset"] not in FILE_DATASETS and not data.get("forecast") \
            and data["T_window"] > data["generator"]["sequence_length"]:
        data["T_window"] = data["generator"]["sequence_length"]
        repairs.append(f"data.T_window -> {data['T_window']} (sequence length)")
    return repairs


def crossover(genome_a: list, genome_b: list, rng: random.Random) -> None:
    """Uniform crossover in place: each gene swaps with probability 1/2."""
    for i in range(len(genome_a)):
        if rng.random() < 0.5:
            genome_a[i], genome_b[i] = genome_b[i], genome_a[i]


def mutate(genes: list[Gene], genome: list, rate: float, rng: random.Random) -> None:
    """Each gene mutates with probability `rate`, in place."""
    for i, gene in enumerate(genes):
        if rng.random() < rate:
            genome[i] = gene.mutate(genome[i], rng)


def diversity(genes: list[Gene], genomes: list[list]) -> float:
    """Mean distance between pairs of genomes, genes scaled to [0, 1] (0: all equal)."""
    points = [[gene.position(v) for gene, v in zip(genes, genome)] for genome in genomes]
    pairs = [(a, b) for i, a in enumerate(points) for b in points[i + 1:]]
    if not pairs:
        return 0.0
    return sum(math.dist(a, b) for a, b in pairs) / len(pairs) / math.sqrt(len(genes))
