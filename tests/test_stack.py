"""Config to models and devices."""

from __future__ import annotations

import pytest
import torch

from regimen.core.allocator import keep_freed_memory
from regimen.train.stack import autocast_for, build_net, net_spec, precision, resolve_device
from regimen.core.weights import load_state_checked
from regimen.core.errors import UserError
from regimen.core.config_file import load_config
from regimen.train.pgm import PGMHead, pgm_settings

from conftest import ROOT


def test_models_follow_the_config():
    config = load_config(ROOT / "config.yaml", ["model.convlstm.num_layers=3",
                                                "model.convlstm.hidden_sizes=[4, 5, 6]",
                                                "model.convlstm.kernel_size=5", "model.pgm.mean_field_iters=2"])
    net = build_net(net_spec(config, input_channels=2, num_outputs=3, task="segmentation"))
    assert [c.hidden_channels for c in net.encoder.cells] == [4, 5, 6]
    assert net.encoder.cells[0].conv_x.kernel_size == (5, 5) and net.encoder.cells[0].conv_x.in_channels == 2
    assert net(torch.randn(1, 2, 2, 6, 6)).shape == (1, 2, 3, 6, 6)
    crf = PGMHead(pgm_settings(config.model.pgm, "segmentation", 3)).model
    assert crf.iterations == 2 and float(crf.spatial_weight.detach()) == pytest.approx(0.7, abs=1e-6)


def test_a_state_of_another_shape_is_named():
    config = load_config(ROOT / "config.yaml")
    small = build_net(net_spec(config, input_channels=1, num_outputs=3, task="segmentation"))
    wide = build_net(net_spec(config, input_channels=2, num_outputs=3, task="segmentation"))
    with pytest.raises(UserError, match=r"ckpt.pt: parameter encoder.cells.0.conv_x.weight has shape "
                                        r"\(64, 2, 3, 3\), the model needs \(64, 1, 3, 3\)"):
        load_state_checked(small, wide.state_dict(), "ckpt.pt")
    with pytest.raises(UserError, match="missing"):
        load_state_checked(small, {}, "ckpt.pt")


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="device = 'cuda:1': CUDA is not available"):
            resolve_device("cuda:1")


def test_autocast_on_the_cpu_is_bf16_where_the_cpu_has_it(monkeypatch):
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):  # emulated bf16 is slower than fp32
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        with autocast_for(torch.device("cpu"), True):
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == dtype
        assert precision(torch.device("cpu"), True) == ("bf16" if native else "fp32")
    with autocast_for(torch.device("cpu"), False):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_freed_memory_is_kept_on_glibc():
    import platform
    if platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory()


def unaries_by_row(outputs) -> torch.Tensor:
    """The unaries of a split's batches, put back in the split's order."""
    rows = {int(row): out for batch in outputs for row, out in zip(batch.rows, batch.unaries)}
    return torch.stack([rows[row] for row in range(len(rows))])


@pytest.mark.parametrize("stride", [2, 4])
def test_stateful_windows_equal_the_network_over_each_whole_sequence(write_config, stride):
    """evaluation.stateful: each window continues from the state its sequence's previous window left
    at its first frame, so its unaries are the whole sequence's, sliced (overlapping or tiling windows)."""
    from regimen.data.preprocess import preprocess
    from regimen.train.inference import network_outputs
    from regimen.data.processed import load_task_data
    from regimen.train.stack import model_input, new_stack
    from regimen.data.store import ArrayFile
    from regimen.core import runs

    config = load_config(write_config({"data": {"T_window": 4, "stride": stride},
                                       "training": {"mixed_precision": False}}))
    preprocess(config)
    data = load_task_data(config.data)
    torch.manual_seed(0)
    stack = new_stack(config, data).eval()
    stateful = unaries_by_row(network_outputs(stack, data, "val", torch.device("cpu"), 3, stateful=True))
    frames = ArrayFile(runs.store_path(data.folder, "val", "X"))
    windows = data.windows("val")
    whole = {}
    for sequence in data.meta["sequences"]["val"]:
        x = torch.from_numpy(frames.rows(sequence["offset"], sequence["frames"]))[None]
        whole[sequence["index"]] = stack.unaries(model_input(x))[0]  # (T, K, H, W)
    for row, (sequence, start) in enumerate(zip(windows.sequence, windows.start)):
        torch.testing.assert_close(stateful[row], whole[int(sequence)][start:start + 4], atol=1e-5, rtol=1e-5)
    # without the state, every window but a sequence's first starts from zeros: other unaries
    restarted = unaries_by_row(network_outputs(stack, data, "val", torch.device("cpu"), 8))
    later = windows.start > 0
    assert not torch.allclose(restarted[later], stateful[later], atol=1e-3)
    torch.testing.assert_close(restarted[~later], stateful[~later], atol=1e-5, rtol=1e-5)
