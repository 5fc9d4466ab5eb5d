"""The PGM heads on unaries: invariants, exact values on tiny chains, fitting, parameter files."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.hmm import forward_backward
from regimen.core.errors import UserError
from regimen.core.config import PGMConfig
from regimen.train.pgm import PGMHead, check_pgm_task, fit_pgm, head_from_params, pgm_params, pgm_settings

SEGMENTATION = (2, 3, 3, 4, 5)  # B, T, K, H, W
TAGGING = (4, 5, 3)  # B, T, K


def head(pgm_type, task):
    return PGMHead(pgm_settings(PGMConfig(type=pgm_type), task, 3))


CASES = [("crf", "segmentation"), ("hmm", "segmentation"), ("chain_crf", "segmentation"),
         ("hmm", "tagging"), ("chain_crf", "tagging")]


@pytest.mark.parametrize("pgm_type,task", CASES)
def test_marginals_are_distributions_and_labels_keep_their_place(pgm_type, task):
    torch.manual_seed(0)
    unaries = torch.randn(SEGMENTATION if task == "segmentation" else TAGGING)
    h = head(pgm_type, task)
    log_q = h.log_marginals(unaries)
    assert log_q.shape == unaries.shape
    torch.testing.assert_close(log_q.exp().sum(dim=2), torch.ones(log_q.shape[:2] + log_q.shape[3:]))
    labels = h.decode(unaries)
    assert labels.shape == unaries.shape[:2] + unaries.shape[3:]
    if task == "segmentation" and pgm_type != "crf":
        # pixel (i, j) of sequence b is decoded from its own chain only
        alone = h.decode(unaries[1:2, :, :, 2:3, 4:5])
        assert torch.equal(alone[0, :, 0, 0], labels[1, :, 2, 4])
    nll = h.nll(unaries, labels.clamp(min=0))
    assert nll.ndim == 0 and torch.isfinite(nll)


def test_the_hybrid_hmm_divides_posteriors_by_priors_and_scales_them():
    torch.manual_seed(1)
    h = head("hmm", "tagging")
    h.log_prior.copy_(torch.tensor([0.5, 0.3, 0.2]).log())
    h.raw_scale.data.fill_(2.0)
    unaries = torch.randn(TAGGING)
    scale = torch.nn.functional.softplus(torch.tensor(2.0))
    emissions = scale * (torch.log_softmax(unaries, 2) - h.log_prior)
    _, posteriors = forward_backward(h.model.log_start, h.model.log_trans, emissions)
    torch.testing.assert_close(h.log_marginals(unaries).exp(), posteriors)


def test_the_chain_crf_nll_is_the_exact_likelihood_per_step():
    torch.manual_seed(2)
    h = head("chain_crf", "tagging")
    unaries, tags = torch.randn(1, 3, 3), torch.tensor([[0, 2, 1]])
    emissions = h.emissions(unaries)[0]
    crf = h.model

    def score(path):
        total = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
        total = total + sum(emissions[t, y] for t, y in enumerate(path))
        return total + sum(crf.transitions[a, b] for a, b in zip(path, path[1:]))

    log_z = torch.logsumexp(torch.stack([score(p) for p in itertools.product(range(3), repeat=3)]), 0)
    torch.testing.assert_close(h.nll(unaries, tags), -(score((0, 2, 1)) - log_z) / 3)


def test_the_hmm_nll_is_the_exact_likelihood_of_the_labelled_path_per_step():
    torch.manual_seed(3)
    h = head("hmm", "tagging")
    h.model.log_start.copy_(torch.tensor([0.6, 0.3, 0.1]).log())
    h.model.log_trans.copy_(torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]).log())
    h.raw_scale.data.fill_(0.3)
    unaries, tags = torch.randn(1, 3, 3), torch.tensor([[0, 2, 1]])
    emissions = h.emissions(unaries)[0]

    def score(path):
        total = h.model.log_start[path[0]] + sum(emissions[t, y] for t, y in enumerate(path))
        return total + sum(h.model.log_trans[a, b] for a, b in zip(path, path[1:]))

    log_z = torch.logsumexp(torch.stack([score(p) for p in itertools.product(range(3), repeat=3)]), 0)
    torch.testing.assert_close(h.nll(unaries, tags), -(score((0, 2, 1)) - log_z) / 3)


def test_hmm_fit_counts_transitions_and_priors():
    labels = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    h = head("hmm", "tagging")
    fit_pgm(h, torch.zeros(2, 4, 3), labels, PGMConfig(type="hmm", pseudo_count=0.0, fit_steps=2), seed=0)
    # transitions counted: 0->0 once, 0->1 once, 1->1 three times, 1->0 once; class 2 never seen
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(h.model.log_trans.exp(), expected)
    torch.testing.assert_close(h.log_prior.exp(), torch.tensor([3 / 8, 5 / 8, 0.0]))


def test_the_crf_fit_lowers_the_structured_nll_on_smooth_labels():
    torch.manual_seed(3)
    labels = torch.zeros(4, 3, 6, 6, dtype=torch.long)
    labels[:, :, :, 3:] = 1
    clean = torch.nn.functional.one_hot(labels, 2).permute(0, 1, 4, 2, 3).float()
    unaries = 2 * clean + 1.5 * torch.randn(4, 3, 2, 6, 6)  # noisy unaries of a smooth truth
    h = PGMHead(pgm_settings(PGMConfig(pairwise_weight=0.05), "segmentation", 2))
    before = h.nll(unaries, labels).item()
    report = fit_pgm(h, unaries, labels, PGMConfig(fit_steps=60, fit_lr=0.1), seed=0)
    assert h.nll(unaries, labels).item() < before and report["method"] == "adam_map"
    assert h.model.spatial_weight.item() > 0.05  # smooth truth: stronger smoothing


@pytest.mark.parametrize("pgm_type,task", CASES)
def test_parameters_round_trip_through_plain_containers(pgm_type, task):
    torch.manual_seed(4)
    h = head(pgm_type, task)
    for p in h.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    unaries = torch.randn(SEGMENTATION if task == "segmentation" else TAGGING)
    again = head_from_params(pgm_params(h, {"name": "x"}), "pgm_params.pkl")
    torch.testing.assert_close(again.log_marginals(unaries), h.log_marginals(unaries))


def test_parameters_of_another_shape_are_named():
    params = pgm_params(head("chain_crf", "tagging"), {"name": "x"})
    params["params"]["model.transitions"] = params["params"]["model.transitions"][:2, :2]
    with pytest.raises(UserError, match=r"p.pkl: parameter model.transitions has shape \(2, 2\), "
                                        r"the model needs \(3, 3\)"):
        head_from_params(params, "p.pkl")


def test_pgm_and_task_must_fit():
    check_pgm_task("hmm", "tagging")
    with pytest.raises(UserError, match="'crf' does not fit task 'tagging': expected hmm or chain_crf"):
        check_pgm_task("crf", "tagging")
    with pytest.raises(UserError, match="task 'regression' has no PGM"):
        check_pgm_task("hmm", "regression")


def test_hmm_counts_and_baum_welch_summed_by_chunk_equal_the_whole_split(monkeypatch):
    """The HMM reads a split a chunk of windows at a time: the same fit as on the whole tensors."""
    from models.hmm import HMM
    from regimen.train import pgm

    monkeypatch.setattr(pgm, "COUNT_WINDOWS", 2)
    torch.manual_seed(8)
    unaries = torch.randn(5, 6, 3, 2, 2)
    labels = torch.randint(0, 3, (5, 6, 2, 2))
    counted = head("hmm", "segmentation")
    fit_pgm(counted, unaries, labels, PGMConfig(type="hmm", pseudo_count=0.5, fit_steps=1), seed=0)
    whole = HMM(3, emission="given")
    whole.fit_supervised(PGMHead._label_chains(labels), pseudo_count=0.5)
    torch.testing.assert_close(counted.model.log_trans, whole.log_trans)
    torch.testing.assert_close(counted.model.log_start, whole.log_start)

    em = head("hmm", "segmentation")
    report = fit_pgm(em, unaries, labels, PGMConfig(type="hmm", fit="em", pseudo_count=0.1), seed=0)
    reference = head("hmm", "segmentation")
    reference.log_prior.copy_(em.log_prior)  # the network's mean posterior, as the fit set it
    history = reference.model.fit_em(reference.emissions(reference._chains(unaries)), iterations=20,
                                     pseudo_count=0.1)
    assert report["log_likelihood"] == pytest.approx(history, abs=1e-5)  # float32 sums in another order
    torch.testing.assert_close(em.model.log_trans, reference.model.log_trans)
    prior = torch.softmax(unaries, dim=2).mean(dim=(0, 1, 3, 4))
    torch.testing.assert_close(em.log_prior.exp(), prior)


def test_predictive_emissions_of_an_exact_filter_give_the_hmms_own_smoothing_and_viterbi():
    """Unaries that are an HMM's filtering distributions `log p(z_t | x_1..t)` (what a one-directional
    network approximates): over the one-step prediction they are the frames' likelihoods up to a
    constant a frame, so the head's marginals and Viterbi path are the HMM's own, exactly; over the
    prior (the plain hybrid emission) the past frames count twice and the marginals differ."""
    from models.hmm import viterbi
    torch.manual_seed(0)
    k = 3
    log_start = torch.log_softmax(torch.randn(k, dtype=torch.float64), 0)
    log_trans = torch.log_softmax(2 * torch.eye(k, dtype=torch.float64) + torch.randn(k, k, dtype=torch.float64), 1)
    log_emit = 2 * torch.randn(6, 9, k, dtype=torch.float64)  # (M, T, K) frames' log-likelihoods
    filtered, log_alpha = [], log_start + log_emit[:, 0]
    for step in range(log_emit.shape[1]):
        if step:
            log_alpha = torch.logsumexp(filtered[-1][:, :, None] + log_trans, dim=1) + log_emit[:, step]
        filtered.append(torch.log_softmax(log_alpha, dim=1))
    unaries = torch.stack(filtered, dim=1)
    _, smoothed = forward_backward(log_start, log_trans, log_emit)
    paths, _ = viterbi(log_start, log_trans, log_emit)
    for emission, exact in (("predictive", True), ("prior", False)):
        hmm = PGMHead(pgm_settings(PGMConfig(type="hmm", emission=emission), "tagging", k)).double()
        hmm.model.log_start.copy_(log_start)
        hmm.model.log_trans.copy_(log_trans)
        hmm.log_prior.copy_(log_start)  # the network's first frame saw only that frame
        assert float(hmm.emission_scale.detach()) == pytest.approx(1.0)
        marginals = hmm.log_marginals(unaries).exp()
        assert torch.allclose(marginals, smoothed, atol=1e-6) == exact
        if exact:
            assert torch.equal(hmm.decode(unaries), paths)


@pytest.mark.parametrize("pgm_type", ["hmm", "chain_crf"])
def test_marginal_decoding_takes_each_nodes_likeliest_label(pgm_type):
    torch.manual_seed(3)
    unaries = 2 * torch.randn(64, 7, 3)
    viterbi_head = head(pgm_type, "tagging")
    marginal_head = PGMHead(pgm_settings(PGMConfig(type=pgm_type, decoding="marginals"), "tagging", 3))
    with torch.no_grad():
        sticky = torch.log_softmax(torch.eye(3) * 3 + torch.rand(3, 3), dim=1)
        (viterbi_head.model.log_trans if pgm_type == "hmm" else viterbi_head.model.transitions).copy_(sticky)
    marginal_head.load_state_dict(viterbi_head.state_dict())
    labels = marginal_head.decode(unaries)
    assert torch.equal(labels, marginal_head.log_marginals(unaries).argmax(dim=2))
    assert not torch.equal(labels, viterbi_head.decode(unaries))  # the likeliest path is another labelling
