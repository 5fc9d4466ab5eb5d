"""Config to models and devices."""

from __future__ import annotations

import pytest
import torch

from regimen.allocator import keep_freed_memory
from regimen.stack import autocast_for, build_net, net_spec, resolve_device
from regimen.weights import load_state_checked
from regimen.errors import UserError
from regimen.config_file import load_config
from regimen.pgm import PGMHead, pgm_settings

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


def test_autocast_on_the_cpu_is_bf16():
    with autocast_for(torch.device("cpu"), True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), False):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_freed_memory_is_kept_on_glibc():
    import platform
    if platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory()
