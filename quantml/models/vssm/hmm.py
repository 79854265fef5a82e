"""The exact forward algorithm of a discrete-state hidden Markov chain, batched over sequences (torch).

Shapes: ``B`` sequences, ``T`` steps, ``K`` states. Everything is in log space. The filter at step
``t`` reads observations ``<= t`` only (a forward recursion: nothing after ``t`` enters it).
"""

from __future__ import annotations

import torch


def forward_filter(
    log_obs: torch.Tensor, log_trans: torch.Tensor, log_init: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered log posteriors and one-step log evidence.

    Parameters
    ----------
    log_obs : [B, T, K]  log p(o_t | z_t = k) (0 where a step has no observation: the filter only predicts).
    log_trans : [K, K]   log A, rows sum to one in probability: A[j, k] = p(z_t = k | z_{t-1} = j).
    log_init : [K]       log p(z_1 = k).

    Returns
    -------
    log_post : [B, T, K]  log p(z_t = k | o_1..o_t).
    log_evidence : [B, T]  log p(o_t | o_1..o_{t-1}) (their sum over t is the exact log-likelihood).
    """
    B, T, K = log_obs.shape
    posts, evidence = [], []
    prior = log_init.expand(B, K)
    for t in range(T):
        if t > 0:  # predict: log sum_j p(z_{t-1}=j | o_<t) A[j, k]
            prior = torch.logsumexp(posts[-1].unsqueeze(-1) + log_trans.unsqueeze(0), dim=1)
        joint = prior + log_obs[:, t]
        ev = torch.logsumexp(joint, dim=-1)
        posts.append(joint - ev.unsqueeze(-1))
        evidence.append(ev)
    return torch.stack(posts, dim=1), torch.stack(evidence, dim=1)


def transition_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """[K, K] unconstrained logits -> log transition matrix (row-wise log-softmax)."""
    return torch.log_softmax(logits, dim=-1)


def sticky_logits(n_states: int, stay: float) -> torch.Tensor:
    """[K, K] logits of a transition matrix that stays with probability ``stay`` and moves uniformly."""
    if n_states == 1:
        return torch.zeros(1, 1)
    move = (1.0 - stay) / (n_states - 1)
    probs = torch.full((n_states, n_states), move)
    probs.fill_diagonal_(stay)
    return torch.log(probs)
