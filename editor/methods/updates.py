"""Weight-update formulas (SPEC section 3) as plain float64 functions; no model, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def memit_factors(
    residual: torch.Tensor,
    keys: torch.Tensor,
    covariance: torch.Tensor,
    mom2_weight: float,
    previous_gram: torch.Tensor | None = None,
    norm_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MEMIT's Delta as D (d, n) and K^T (lambda C + K K^T)^-1 (n, m), for residuals D^T (n, d), keys K^T (n, m).

    ENCORE's form adds the earlier edits' K_p K_p^T (m, m) and norm_weight I (the ||Delta||_F^2 constraint)
    inside the inverse: both are zero for plain MEMIT.
    """
    residual, keys, covariance = residual.double(), keys.double(), covariance.double()
    system = mom2_weight * covariance + keys.T @ keys  # (m, m), symmetric
    if previous_gram is not None:
        system = system + previous_gram.double()
    if norm_weight:
        system = system + norm_weight * torch.eye(system.shape[0], dtype=torch.float64, device=system.device)
    adjusted = torch.linalg.solve(system, keys.T)  # (m, n) = (lambda C + K K^T)^-1 K
    return residual.T, adjusted.T


def memit_update(residual: torch.Tensor, keys: torch.Tensor, covariance: torch.Tensor, mom2_weight: float) -> torch.Tensor:
    """Delta (d, m) = D K^T (lambda C + K K^T)^-1 for residuals D^T (n, d), keys K^T (n, m), C (m, m); float64 solve."""
    left, right = memit_factors(residual, keys, covariance, mom2_weight)
    return left @ right


def rome_factors(value_change: torch.Tensor, key: torch.Tensor, covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ROME's rank-one Delta as (v - W k) / ((C^-1 k)^T k) (d, 1) and (C^-1 k)^T (1, m)."""
    value_change, key, covariance = value_change.double(), key.double(), covariance.double()
    direction = torch.linalg.solve(covariance, key)  # C^-1 k
    return (value_change / torch.dot(direction, key)).unsqueeze(1), direction.unsqueeze(0)


def rome_update(value_change: torch.Tensor, key: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Rank-one Delta (d, m) = (v - W k)(C^-1 k)^T / ((C^-1 k)^T k) for v - W k (d,), k (m,), C (m, m)."""
    left, right = rome_factors(value_change, key, covariance)
    return left @ right


@dataclass(frozen=True)
class NullSpace:
    """AlphaEdit's preserved null space of C: the projection P (m, m) onto it and how null it really is."""

    projection: torch.Tensor  # (m, m), float64
    size: int  # directions in it, of m
    energy_share: float  # share of trace(C) = E||k||^2 of the preserved keys that lies in it (0 for a true null space)


def _free_directions(values: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int, float]:
    """For C's eigenvalues (m,): which lie below threshold, how many, and their share of trace(C) (negatives as 0)."""
    energies = values.clamp_min(0)
    free = values < threshold
    total = float(energies.sum())
    return free, int(free.sum()), float(energies[free].sum()) / total if total > 0 else 0.0


def null_space(covariance: torch.Tensor, threshold: float) -> NullSpace:
    """The span of C's (m, m) eigenvectors with eigenvalue < threshold: P, its size, and its share of trace(C)."""
    values, vectors = torch.linalg.eigh(covariance.double())
    free, size, share = _free_directions(values, threshold)
    basis = vectors[:, free]
    return NullSpace(basis @ basis.T, size, share)


def null_space_profile(covariance: torch.Tensor, thresholds: list[float]) -> list[tuple[int, float]]:
    """(size, share of trace(C)) of the null space at each threshold, from one eigendecomposition of C (m, m)."""
    values = torch.linalg.eigvalsh(covariance.double())
    return [_free_directions(values, threshold)[1:] for threshold in thresholds]


def projected_key_share(keys: torch.Tensor, projection: torch.Tensor) -> float:
    """Mean ||P k|| / ||k|| over keys K^T (n, m): how much of the edited keys AlphaEdit's update can act on."""
    keys = keys.double()
    norms = keys.norm(dim=-1).clamp_min(1e-12)
    return float(((keys @ projection.double()).norm(dim=-1) / norms).mean())


def alphaedit_factors(
    residual: torch.Tensor,
    keys: torch.Tensor,
    projection: torch.Tensor,
    previous_gram: torch.Tensor | None,
    l2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AlphaEdit's Delta as D (d, n) and S^T (n, m), S = (P (K K^T + K_p K_p^T) + l2 I)^-1 P K (Fang et al. 2024).

    residual D^T (n, d), keys K^T (n, m), P (m, m) the projection onto C's null space, previous_gram
    K_p K_p^T (m, m) of the earlier edits' keys (None: none). Delta = D S^T = X^T for X the solution of
    (P (K K^T + K_p K_p^T) + l2 I) X = P K D^T; X lies in P's range, so Delta k = 0 for keys k that P removes.
    """
    residual, keys, projection = residual.double(), keys.double(), projection.double()
    gram = keys.T @ keys
    if previous_gram is not None:
        gram = gram + previous_gram.double()
    size = projection.shape[0]
    system = projection @ gram + l2 * torch.eye(size, dtype=torch.float64, device=projection.device)
    solution = torch.linalg.solve(system, projection @ keys.T)  # (m, n)
    return residual.T, solution.T


def alphaedit_update(
    residual: torch.Tensor,
    keys: torch.Tensor,
    projection: torch.Tensor,
    previous_keys: torch.Tensor | None,
    l2: float,
) -> torch.Tensor:
    """AlphaEdit's Delta (d, m): solve (P (K K^T + K_p K_p^T) + l2 I) X = P K D^T, Delta = X^T (Fang et al. 2024)."""
    previous_gram = None
    if previous_keys is not None and previous_keys.numel():
        previous_gram = previous_keys.double().T @ previous_keys.double()
    left, right = alphaedit_factors(residual, keys, projection, previous_gram, l2)
    return left @ right
