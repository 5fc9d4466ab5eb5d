"""The config: strict loading, overrides, validation, hash and round trip."""

from __future__ import annotations

import pytest

from regimen.core.errors import UserError
from regimen.core.config import Config, config_hash, dump_config, get_key, leaf_keys
from regimen.core.config_file import load_config

from conftest import ROOT


def test_shipped_config_loads_with_every_original_key():
    config = load_config(ROOT / "config.yaml")
    for key in ["seed", "device", "data.root", "data.format", "data.T_window", "data.stride",
                "data.normalize", "data.augmentations.spatial_flip", "data.augmentations.rotate_deg",
                "data.augmentations.gaussian_noise_std", "model.convlstm.num_layers",
                "model.convlstm.hidden_sizes", "model.convlstm.kernel_size", "model.convlstm.dropout",
                "model.convlstm.bidirectional", "model.pgm.type", "model.pgm.pairwise_weight",
                "model.pgm.temporal_links", "model.pgm.mean_field_iters", "training.optimizer",
                "training.lr", "training.weight_decay", "training.batch_size", "training.epochs",
                "training.grad_clip", "training.mixed_precision", "training.early_stopping_patience",
                "loss.alpha_unary", "loss.beta_structured", "loss.gamma_consistency",
                "evolutionary.enabled", "evolutionary.population_size", "evolutionary.generations",
                "evolutionary.elitism", "evolutionary.tournament_k", "evolutionary.mutation_rate",
                "evolutionary.crossover_rate", "evolutionary.low_fidelity.downsample_factor",
                "evolutionary.low_fidelity.max_epochs", "evolutionary.search_space",
                "data.dataset", "data.task", "data.generator.num_sequences"]:
        assert key in leaf_keys(), key
    assert config.device == "auto"
    assert config.evolutionary.search_space  # the shipped search space validates


def test_every_shipped_key_has_a_comment():
    for line in (ROOT / "config.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":") \
                and not stripped.startswith("model.") and not stripped.startswith("training.") \
                and not stripped.startswith("loss."):
            assert "#" in line, f"no comment on: {line}"


def test_dump_loads_back_to_the_same_config(tmp_path):
    config = load_config(ROOT / "config.yaml", ["data.T_window=6", "training.lr=1e-3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    again = load_config(path)
    assert again == config
    assert config_hash(again) == config_hash(config)


def test_hash_changes_with_any_value_and_not_with_formatting(tmp_path):
    base = load_config(ROOT / "config.yaml")
    changed = load_config(ROOT / "config.yaml", ["model.pgm.pairwise_weight=0.71"])
    assert config_hash(base) != config_hash(changed)
    reformatted = tmp_path / "c.yaml"
    reformatted.write_text("# only a comment and defaults\n{}\n")
    assert config_hash(load_config(reformatted)) == config_hash(Config())


def test_overrides_parse_yaml_and_apply_in_order():
    config = load_config(ROOT / "config.yaml", [
        "model.convlstm.num_layers=3", "model.convlstm.hidden_sizes=[4, 5, 6]",
        "training.lr=1e-3", "data.static_features=[edges, mask]", "training.lr=5e-4"])
    assert config.model.convlstm.hidden_sizes == [4, 5, 6]
    assert config.training.lr == 5e-4  # the last --set wins
    assert isinstance(config.training.lr, float)
    assert config.data.static_features == ["edges", "mask"]


def test_the_shipped_config_holds_the_defaults():
    """A config file with only the keys that differ means what the shipped config plus those keys means."""
    shipped, defaults = load_config(ROOT / "config.yaml"), Config()
    assert {key: get_key(shipped, key) for key in leaf_keys()} == {key: get_key(defaults, key) for key in leaf_keys()}


def test_missing_keys_take_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\n")
    config = load_config(path)
    assert config.seed == 7 and config.model.convlstm.kernel_size == 3


@pytest.mark.parametrize("override, message", [
    ("trainig.lr=1", "unknown key 'trainig'; did you mean 'training'?"),
    ("model.convlstm.kernal_size=3", "unknown key 'model.convlstm.kernal_size'; did you mean 'model.convlstm.kernel_size'?"),
    ("training.lr=fast", "training.lr = 'fast': expected a number"),
    ("training.batch_size=2.5", "training.batch_size = 2.5: expected an integer"),
    ("training.mixed_precision=maybe", "training.mixed_precision = 'maybe': expected true or false"),
    ("model.convlstm.kernel_size=4", "model.convlstm.kernel_size = 4: must be an odd positive integer"),
    ("model.convlstm.hidden_sizes=[8]", "model.convlstm.hidden_sizes = [8]: needs one size per layer"),
    ("data.T_window=99", "data.T_window = 99: must be <= data.generator.sequence_length (24)"),
    ("evolutionary.mutation_rate=1.5", "evolutionary.mutation_rate = 1.5: must be in [0, 1]"),
    ("model.convlstm.dropout=1.0", "model.convlstm.dropout = 1.0: must be in [0, 1)"),
    ("model.pgm.type=crff", "model.pgm.type = 'crff': expected one of crf, hmm, chain_crf; did you mean 'crf'?"),
    ("data.task=tagging", "data.task = 'tagging': dataset 'storms' offers segmentation, regression"),
    ("device=gpu", "device = 'gpu': expected auto, cpu, cuda or cuda:N"),
    ("data.splits=[0.5, 0.5]", "data.splits = [0.5, 0.5]: expected three fractions"),
    ("data.augmentations.rotate_deg=[45]", "item 0 (45) must be one of 0, 90, 180, 270"),
    ("data.dataset=npz", "data.path = None: dataset 'npz' needs the path"),
    ("evolutionary.search_space={model.convlstm.layers: {type: int, low: 1, high: 2}}",
     "'model.convlstm.layers' is not a config key; did you mean 'model.convlstm.num_layers'?"),
    ("evolutionary.search_space={training.lr: {type: float, low: 0.1, high: 0.01}}",
     "low (0.1) is greater than high (0.01)"),
    ("evolutionary.search_space={model.convlstm.kernel_size: {choice: []}}", "expected a non-empty list"),
    ("evolutionary.search_space={training.lr: {type: float, low: 0.0, high: 0.1, log: true}}",
     "log: true needs low > 0"),
    ("novalue", "--set 'novalue': expected dotted.key=value"),
])
def test_bad_values_are_refused_naming_key_and_value(override, message):
    with pytest.raises(UserError) as raised:
        load_config(ROOT / "config.yaml", [override])
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\ndata:\n  T_window: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping of sections"):
        load_config(path)
