"""Benchmarks of models/ against the textbook ConvLSTM cell, hmmlearn and pytorch-crf.

    pip install -r bench/requirements.txt
    python bench/model_speed.py            # every table (about 10 minutes on 2 cores)
    python bench/model_speed.py --quick    # fewer repeats, smaller ConvLSTM shapes
    python bench/model_speed.py --only patches   # patch size 4 vs 1 on 64x64 frames
    python bench/model_speed.py --only convlstm --precisions fp32
    python bench/model_speed.py --device cuda      # the ConvLSTM tables on a GPU, with ConvLSTM-S's shape

Prints median-of-repeats tables; every ratio compares two timings made in the same run. The
ConvLSTM tables give the achieved GFLOP/s of the convolutions (multiply-adds x 2, a training step
taken as three forward passes) against a large fp32 matrix product's on the same machine, the
practical roof (on a GPU in the precision cuDNN's convolutions use: TF32 where allowed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from reference_models import ConcatConvLSTMCell, run_reference

from models.chain_crf import ChainCRF
from models.convlstm import ConvLSTM
from models.crf import SpaceTimeCRF
from models.hmm import HMM, forward_backward, viterbi
from models.network import ConvLSTMNet
from regimen.core.allocator import keep_freed_memory


def seconds_of_runs(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    return statistics.median(seconds_of_runs(fn, repeats, warmup))


def paired_median_seconds(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """`median_seconds` of each function, their runs taken in turn (a, b, a, b, ...): on a shared
    machine a slow spell then slows both sides of a ratio alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


# --------------------------------------------------------------------------- ConvLSTM


def convlstm_flops(b, t, c, h, w, hidden, k) -> float:
    """Multiply-adds x 2 of one forward pass (the convolutions)."""
    flops, inputs = 0.0, c
    for size in hidden:
        flops += 2 * b * t * h * w * 4 * size * k * k * (inputs + size)
        inputs = size
    return flops


def training_step(model: torch.nn.Module, forward, target: torch.Tensor, precision: str):
    """One Adam step of `model` on the MSE of `forward()` against `target`, in `precision`, on
    `target`'s device (waiting for a GPU to finish, so that the step can be timed)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    device = target.device

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = forward()
        F.mse_loss(out.float(), target).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def bench_convlstm(repeats: int, quick: bool, roof: float, precisions: list[str], device: torch.device) -> None:
    shapes = [(8, 8, 1, 32, 32, [32, 32], 3), (16, 10, 1, 64, 64, [64, 64], 3), (4, 8, 2, 48, 48, [16], 5)]
    if quick:
        shapes[1] = (4, 6, 1, 32, 32, [32, 32], 3)
    if device.type == "cuda":  # OpenSTL's ConvLSTM-S on Moving MNIST: 64x64 frames as 16x16x16, 20 frames
        shapes.append((16, 20, 16, 16, 16, [128] * 4, 5))
    rows = []
    for b, t, c, h, w, hidden, k in shapes:
        torch.manual_seed(0)
        ours = ConvLSTM(c, hidden, k).to(device)
        reference = torch.nn.ModuleList(ConcatConvLSTMCell.from_cell(cell) for cell in ours.cells)
        x = torch.randn(b, t, c, h, w, device=device)
        target = torch.randn(b, t, hidden[-1], h, w, device=device)
        # a training step costs about three forward passes
        gflop = 3 * convlstm_flops(b, t, c, h, w, hidden, k) / 1e9
        concat_fp32 = None
        for precision in precisions:
            steps = {"ours": training_step(ours, lambda: ours(x)[0], target, precision),
                     "concat": training_step(reference, lambda: run_reference(list(reference), x), target, precision)}
            seconds = paired_median_seconds(steps, repeats)
            if precision == "fp32":
                concat_fp32 = seconds["concat"]
            rows.append([f"B={b} T={t} C={c} {h}x{w} hidden {hidden} k{k}", precision,
                         f"{b / seconds['ours']:.1f}", f"{gflop / seconds['ours']:.1f}",
                         f"{100 * gflop / seconds['ours'] / roof:.0f}%",
                         f"{b / seconds['concat']:.1f}", f"{seconds['concat'] / seconds['ours']:.2f}x",
                         f"{concat_fp32 / seconds['ours']:.2f}x" if concat_fp32 else "-"])
    table(f"ConvLSTM training step (Adam, MSE) on {device_name(device)}: ours (hoisted input conv) vs "
          f"concat-then-conv cell; roof: {roof_name(device)}, {roof:.0f} GFLOP/s",
          ["shape", "precision", "ours seq/s", "ours GFLOP/s", "of roof", "concat seq/s", "vs concat, same precision",
           "vs concat fp32"], rows)


def matmul_roof(repeats: int, device: torch.device) -> float:
    """GFLOP/s of a large fp32 matrix product on `device`, its fastest of `repeats` runs: the practical
    roof (a peak, so not a median, which a shared machine's slow spell lowers). On a GPU the product
    may use TF32 where cuDNN's convolutions may (PyTorch's default lets convolutions, not products)."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        product = (lambda: (a @ b, torch.cuda.synchronize(device))) if device.type == "cuda" else (lambda: a @ b)
        seconds = min(seconds_of_runs(product, repeats))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    return 2 * size ** 3 / seconds / 1e9


def roof_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "a 2048^2 fp32 matrix product"
    tf32 = "on" if torch.backends.cudnn.allow_tf32 else "off"
    return f"an 8192^2 fp32 matrix product (TF32 {tf32}, as the convolutions)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"the CPU ({torch.get_num_threads()} threads)"


def bench_patches(repeats: int, roof: float, device: torch.device) -> None:
    """Patch size 4 against 1 on 64x64 frames (Moving MNIST's shape): the network's training step."""
    b, t, hidden, k = 8, 10, [32, 32], 5
    x, target = torch.randn(b, t, 1, 64, 64, device=device), torch.randn(b, t, 1, 64, 64, device=device)
    rows, seconds = [], {}
    for patch in (1, 4):
        torch.manual_seed(0)
        net = ConvLSTMNet(1, hidden, k, "regression", 1, patch_size=patch).to(device)
        seconds[patch] = median_seconds(training_step(net, lambda: net(x), target, "fp32"), repeats)
        side = 64 // patch
        gflop = 3 * convlstm_flops(b, t, patch * patch, side, side, hidden, k) / 1e9
        rows.append([f"patch {patch}: {side}x{side}x{patch * patch}", f"{seconds[patch] * 1e3:.0f}",
                     f"{b / seconds[patch]:.1f}", f"{gflop / seconds[patch]:.1f}",
                     f"{100 * gflop / seconds[patch] / roof:.0f}%", f"{seconds[1] / seconds[patch]:.2f}x"])
    table(f"ConvLSTM training step on 64x64 frames, B={b} T={t} hidden {hidden} k{k} (fp32) on {device_name(device)}: "
          f"patch size 4 vs 1; roof: {roof_name(device)}, {roof:.0f} GFLOP/s",
          ["case", "ms/step", "seq/s", "conv GFLOP/s", "of roof", "speed-up vs patch 1"], rows)


# --------------------------------------------------------------------------- HMM


def bench_hmm(repeats: int) -> None:
    from hmmlearn.hmm import CategoricalHMM  # here, not above: the GPU tables run without the CPU peers

    rows = []
    for n, t, k, symbols in ((256, 64, 4, 8), (256, 64, 16, 8), (8192, 16, 4, 8)):
        rng = np.random.default_rng(0)
        start = rng.dirichlet(np.ones(k))
        trans = rng.dirichlet(np.ones(k), size=k)
        emission = rng.dirichlet(np.ones(symbols), size=k)
        observations = rng.integers(0, symbols, size=(n, t))
        peer = CategoricalHMM(k, implementation="scaling", init_params="", params="ste", n_iter=10, tol=0.0)
        peer.n_features = symbols
        peer.startprob_, peer.transmat_, peer.emissionprob_ = start, trans, emission
        flat, lengths = observations.reshape(-1, 1), [t] * n

        log_start, log_trans = torch.tensor(start).log(), torch.tensor(trans).log()
        obs = torch.from_numpy(observations)
        log_emit = torch.tensor(emission).log().T[obs]  # (N, T, K)

        ours_ll, _ = forward_backward(log_start, log_trans, log_emit)
        assert abs(float(ours_ll.sum()) - peer.score(flat, lengths)) < 1e-6 * abs(float(ours_ll.sum()))

        fb_peer = median_seconds(lambda: peer.score_samples(flat, lengths), repeats)
        fb_ours = median_seconds(lambda: forward_backward(log_start, log_trans, log_emit), repeats)
        vi_peer = median_seconds(lambda: peer.decode(flat, lengths, algorithm="viterbi"), repeats)
        vi_ours = median_seconds(lambda: viterbi(log_start, log_trans, log_emit), repeats)
        shape = f"N={n} T={t} K={k}"
        rows.append([shape, "forward-backward", f"{fb_ours * 1e3:.1f}", f"{fb_peer * 1e3:.1f}",
                     f"{fb_peer / fb_ours:.1f}x"])
        rows.append([shape, "viterbi", f"{vi_ours * 1e3:.1f}", f"{vi_peer * 1e3:.1f}", f"{vi_peer / vi_ours:.1f}x"])
        if (n, t, k) == (256, 64, 4):
            def fit_peer():
                peer.startprob_, peer.transmat_, peer.emissionprob_ = start, trans, emission
                peer.fit(flat, lengths)

            def fit_ours():
                hmm = HMM(k, "categorical", num_symbols=symbols).double()
                hmm.log_start.copy_(log_start)
                hmm.log_trans.copy_(log_trans)
                hmm.log_emission.copy_(torch.tensor(emission).log())
                hmm.fit_em(obs, iterations=10, tolerance=0.0)

            em_peer, em_ours = median_seconds(fit_peer, repeats), median_seconds(fit_ours, repeats)
            rows.append([shape, "10 EM iterations", f"{em_ours * 1e3:.1f}", f"{em_peer * 1e3:.1f}",
                         f"{em_peer / em_ours:.1f}x"])
    table("HMM, categorical emissions, float64: ours vs hmmlearn (implementation='scaling')",
          ["shape", "operation", "ours ms", "hmmlearn ms", "speed-up"], rows)


# --------------------------------------------------------------------------- chain CRF


def bench_chain_crf(repeats: int) -> None:
    from torchcrf import CRF  # here, not above: the GPU tables run without the CPU peers

    rows = []
    for b, t, k in ((64, 32, 5), (64, 128, 20)):
        torch.manual_seed(0)
        peer = CRF(k, batch_first=True)
        ours = ChainCRF(k)
        ours.load_state_dict(peer.state_dict())
        emissions = torch.randn(b, t, k, requires_grad=True)
        tags = torch.randint(k, (b, t))
        lengths = torch.randint(t // 2, t + 1, (b,))
        lengths[0] = t
        mask = torch.arange(t)[None] < lengths[:, None]

        with torch.no_grad():
            decoded = ours.decode(emissions, mask)
            for row, path in enumerate(peer.decode(emissions, mask.byte())):
                assert decoded[row, :len(path)].tolist() == path

        def nll(model):
            loss = -model(emissions, tags, mask.byte(), reduction="sum") if model is peer else \
                -model.log_likelihood(emissions, tags, mask).sum()
            loss.backward()

        with torch.no_grad():
            d_ours = median_seconds(lambda: ours.decode(emissions, mask), repeats)
            d_peer = median_seconds(lambda: peer.decode(emissions, mask.byte()), repeats)
        n_ours = median_seconds(lambda: nll(ours), repeats)
        n_peer = median_seconds(lambda: nll(peer), repeats)
        shape = f"B={b} T={t} K={k}"
        rows.append([shape, "decode", f"{d_ours * 1e3:.2f}", f"{d_peer * 1e3:.2f}", f"{d_peer / d_ours:.1f}x"])
        rows.append([shape, "NLL forward+backward", f"{n_ours * 1e3:.2f}", f"{n_peer * 1e3:.2f}",
                     f"{n_peer / n_ours:.1f}x"])
    table("Chain CRF: ours vs pytorch-crf", ["shape", "operation", "ours ms", "pytorch-crf ms", "speed-up"], rows)


# --------------------------------------------------------------------------- mean-field CRF


def bench_mean_field(repeats: int) -> None:
    """At the default config: B=8 T=8 32x32, K=3, hidden [16, 16], kernel 3."""
    torch.manual_seed(0)
    encoder = ConvLSTM(1, [16, 16], 3).eval()
    crf = SpaceTimeCRF(3, iterations=5, pairwise_weight=0.7, temporal_links=True).eval()
    x = torch.randn(8, 8, 1, 32, 32)
    unaries = torch.randn(8, 8, 3, 32, 32)
    rows = []
    with torch.no_grad():
        lstm = median_seconds(lambda: encoder(x), repeats)
        for inference in ("mean_field", "loopy_bp"):
            crf.inference = inference
            seconds = median_seconds(lambda: crf(unaries), repeats)
            rows.append([inference, f"{seconds * 1e3:.1f}", f"{lstm * 1e3:.1f}", f"{100 * seconds / lstm:.0f}%"])
    table("Space-time CRF (5 iterations, temporal links) vs ConvLSTM forward, default config",
          ["inference", "CRF ms", "ConvLSTM ms", "CRF / ConvLSTM"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller ConvLSTM shapes")
    parser.add_argument("--only", choices=["convlstm", "patches", "hmm", "chain_crf", "mean_field"], action="append")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                        help="the ConvLSTM table's (bf16 on a CPU without bf16 instructions is ten times slower)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N for the ConvLSTM tables on a GPU")
    args = parser.parse_args()
    device = checked_device(parser, args.device, args.only)
    allocator = keep_freed_memory()  # as every phase script does; both sides of each ratio gain
    repeats = 3 if args.quick else 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, freed memory kept: {allocator}, "
          f"device: {device_name(device)}")
    roof = matmul_roof(3 * repeats, device)
    sections = {"hmm": lambda: bench_hmm(repeats), "chain_crf": lambda: bench_chain_crf(repeats),
                "mean_field": lambda: bench_mean_field(repeats),
                "convlstm": lambda: bench_convlstm(3 if args.quick else 5, args.quick, roof, args.precisions, device),
                "patches": lambda: bench_patches(3 if args.quick else 5, roof, device)}
    for name in args.only or (GPU_SECTIONS if device.type == "cuda" else sections):
        sections[name]()


GPU_SECTIONS = ("convlstm", "patches")  # the others compare with CPU libraries


def checked_device(parser: argparse.ArgumentParser, name: str, only) -> torch.device:
    """`--device` as a device, or the parser's error (exit 2) for a bad name, a missing GPU, or a CPU-only table."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name}: expected cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: no GPU is visible to torch {torch.__version__}")
    if device.type == "cuda" and set(only or GPU_SECTIONS) - set(GPU_SECTIONS):
        parser.error(f"--device {name}: only the {' and '.join(GPU_SECTIONS)} tables run on a GPU")
    return device


if __name__ == "__main__":
    main()
