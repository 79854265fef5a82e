"""The TFT's fused encoder variable selection (``VariableSelectionNetwork.select_reals``) computes what the
plain path (``forward(embedding(x))``) computes: outputs, selection weights and every gradient; and its
dropout is seeded and of the right rate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import quantml.models.sequence.tft as tft
from quantml.models.sequence.tft import Dropout, RealEmbedding, VariableSelectionNetwork, dropout_mask


def _pair(n_vars: int, d_var: int, d: int) -> tuple[VariableSelectionNetwork, RealEmbedding]:
    torch.manual_seed(0)
    vsn = VariableSelectionNetwork(n_vars, d_var, d, dropout=0.1, d_context=d).double().eval()
    emb = RealEmbedding(n_vars, d_var).double()
    with torch.no_grad():  # non-trivial biases and LayerNorm affine: every folded term matters
        for p in list(vsn.parameters()) + list(emb.parameters()):
            p.add_(0.3 * torch.randn_like(p))
    return vsn, emb


def _outputs_and_gradients(select, params, x, c, probe_o, probe_w):
    c = c.clone().requires_grad_()
    out, w = select(x, c)
    loss = (out * probe_o).sum() + (w * probe_w).sum()
    return out.detach(), w.detach(), torch.autograd.grad(loss, params + [c], allow_unused=True)


@pytest.mark.parametrize(
    "n_vars, d_var, d, n",
    [
        (14, 16, 64, 3000),  # the benchmark's sizes, over several row slices
        (3, 1, 8, 50),  # d_var == 1: the flat GRN has no skip layer
        (5, 8, 8, 700),  # d_var == d: the per-variable GRNs have no skip layer
        (1, 4, 8, 20),  # one variable: no selection GRN, weight 1
    ],
)
@pytest.mark.parametrize("recompute", ["over_budget", "shared_steps", "kept"])
def test_fused_selection_matches_the_plain_path_with_gradients(n_vars, d_var, d, n, recompute, monkeypatch):
    monkeypatch.setattr(tft, "VAR_GRN_ELEMENTS", 1024)  # several slices
    monkeypatch.setattr(tft, "VAR_GRN_KEEP_BYTES", 0 if recompute == "over_budget" else 1 << 62)
    vsn, emb = _pair(n_vars, d_var, d)
    g = torch.Generator().manual_seed(1)
    x, c = (torch.randn(n, k, generator=g, dtype=torch.float64) for k in (n_vars, d))
    probe_o = torch.randn(n, d, generator=g, dtype=torch.float64)
    probe_w = torch.randn(n, n_vars, generator=g, dtype=torch.float64)
    params = list(vsn.parameters()) + list(emb.parameters())
    o1, w1, g1 = _outputs_and_gradients(lambda x, c: vsn(emb(x), c), params, x, c, probe_o, probe_w)
    shared = recompute == "shared_steps"
    o2, w2, g2 = _outputs_and_gradients(
        lambda x, c: vsn.select_reals(x, emb, c, recompute=shared), params, x, c, probe_o, probe_w
    )
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w2, w1, rtol=1e-10, atol=1e-10)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        if a is None:  # a parameter the plain path does not reach (none expected besides unused ones)
            assert b is None or not torch.any(b)
        else:
            assert b is not None
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("window_steps, recomputed", [(100, False), (199, False), (200, True), (2000, True)])
def test_selection_of_shared_steps_is_recomputed_in_the_backward_pass(window_steps, recomputed, monkeypatch):
    calls = []
    monkeypatch.setattr(tft, "checkpoint", lambda f, *a, **k: calls.append(f) or f(*a))
    vsn, emb = _pair(4, 4, 8)
    net = SimpleNamespace(encoder_vsn=vsn, encoder_embedding=emb)  # what ``_select_steps`` reads
    xu, c = torch.randn(100, 4, dtype=torch.float64), torch.randn(100, 8, dtype=torch.float64)
    tft.TemporalFusionNet._select_steps(net, xu, c, window_steps)  # 100 distinct steps of `window_steps`
    assert bool(calls) is recomputed
    calls.clear()
    with torch.no_grad():  # nothing to recompute without autograd
        tft.TemporalFusionNet._select_steps(net, xu, c, window_steps)
    assert not calls


def test_fused_selection_in_training_mode_is_seeded_and_drops_out():
    vsn, emb = _pair(6, 4, 8)
    vsn.train()
    x = torch.randn(400, 6, dtype=torch.float64)
    c = torch.randn(400, 8, dtype=torch.float64)
    torch.manual_seed(3)
    a, _ = vsn.select_reals(x, emb, c)
    torch.manual_seed(3)
    b, _ = vsn.select_reals(x, emb, c)
    torch.manual_seed(4)
    other, _ = vsn.select_reals(x, emb, c)
    vsn.eval()
    clean, _ = vsn.select_reals(x, emb, c)
    assert torch.equal(a, b)
    assert not torch.allclose(a, other) and not torch.allclose(a, clean)


def test_dropout_mask_rate_and_scale_and_module_behaviour():
    torch.manual_seed(0)
    m = dropout_mask((200_000,), 0.1, torch.empty(0))
    values = torch.unique(m).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.9)
    assert abs(float((m == 0).float().mean()) - 0.1) < 0.005
    assert abs(float(m.mean()) - 1.0) < 0.01  # inverted dropout keeps the mean
    drop = Dropout(0.3)
    x = torch.ones(1000)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    y = drop.train()(x)
    assert 0.2 < float((y == 0).float().mean()) < 0.4


@pytest.mark.parametrize("training", [False, True])
def test_attention_on_the_query_side_matches_the_textbook_evaluation(training):
    """Keys and values folded into the queries: the same outputs, attention weights, dropout draws and
    gradients as projecting every memory step (a causal mask over decoder steps included)."""
    torch.manual_seed(0)
    B, Q, T, d, heads = 6, 3, 11, 16, 4
    att = tft.InterpretableMultiHeadAttention(d, heads, dropout=0.3).double().train(training)
    with torch.no_grad():
        for p in att.parameters():
            p.add_(0.3 * torch.randn_like(p))
    query, memory = torch.randn(B, Q, d, dtype=torch.float64), torch.randn(B, T, d, dtype=torch.float64)
    allowed = torch.rand(B, Q, T) > 0.3
    allowed[:, :, -Q:] = torch.ones(Q, Q, dtype=torch.bool).tril()  # every query sees itself
    probe = torch.randn(B, Q, d, dtype=torch.float64)
    results = []
    for fn in (att.forward, lambda *a: tft.reference_attention(att, *a)):
        q, m = query.clone().requires_grad_(), memory.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout draws for both
        out, weights = fn(q, m, allowed)
        grads = torch.autograd.grad((out * probe).sum(), [q, m, *att.parameters()])
        results.append((out, weights, grads))
    (out, weights, grads), (ref_out, ref_weights, ref_grads) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-10, atol=1e-12)
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-11)
    assert not training or not torch.equal(out, att.eval()(query, memory, allowed)[0])  # dropout did act
