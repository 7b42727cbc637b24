"""Weight-update formulas (SPEC section 3) as plain float64 functions; no model, no I/O."""

from __future__ import annotations

import torch


def memit_update(residual: torch.Tensor, keys: torch.Tensor, covariance: torch.Tensor, mom2_weight: float) -> torch.Tensor:
    """Delta (d, m) = D K^T (lambda C + K K^T)^-1 for residuals D^T (n, d), keys K^T (n, m), C (m, m); float64 solve."""
    residual, keys, covariance = residual.double(), keys.double(), covariance.double()
    system = mom2_weight * covariance + keys.T @ keys  # (m, m), symmetric
    adjusted = torch.linalg.solve(system, keys.T)  # (m, n) = (lambda C + K K^T)^-1 K
    return residual.T @ adjusted.T


def rome_update(value_change: torch.Tensor, key: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Rank-one Delta (d, m) = (v - W k)(C^-1 k)^T / ((C^-1 k)^T k) for v - W k (d,), k (m,), C (m, m)."""
    value_change, key, covariance = value_change.double(), key.double(), covariance.double()
    direction = torch.linalg.solve(covariance, key)  # C^-1 k
    return torch.outer(value_change, direction) / torch.dot(direction, key)


def nullspace_projection(covariance: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """P (m, m) projecting onto the span of C's eigenvectors with eigenvalue < threshold, and that span's size."""
    values, vectors = torch.linalg.eigh(covariance.double())
    basis = vectors[:, values < threshold]
    return basis @ basis.T, int(basis.shape[1])


def alphaedit_update(
    residual: torch.Tensor,
    keys: torch.Tensor,
    projection: torch.Tensor,
    previous_keys: torch.Tensor | None,
    l2: float,
) -> torch.Tensor:
    """AlphaEdit's Delta (d, m): solve (P (K K^T + K_p K_p^T) + l2 I) X = P K D^T, Delta = X^T (Fang et al. 2024)."""
    residual, keys, projection = residual.double(), keys.double(), projection.double()
    gram = keys.T @ keys
    if previous_keys is not None and previous_keys.numel():
        previous_keys = previous_keys.double()
        gram = gram + previous_keys.T @ previous_keys
    size = projection.shape[0]
    system = projection @ gram + l2 * torch.eye(size, dtype=torch.float64, device=projection.device)
    solution = torch.linalg.solve(system, projection @ keys.T @ residual)  # (m, d)
    return solution.T
