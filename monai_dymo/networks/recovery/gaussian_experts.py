"""Diagonal Gaussian experts over a shared latent: their product with the prior ``N(0, I)`` and its KL to the prior."""

from __future__ import annotations

import torch

__all__ = ["product_of_natural_experts", "product_of_experts", "gaussian_kl_standard"]


def product_of_natural_experts(
    eta: torch.Tensor, log_prec: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of Gaussian experts in natural parameters, together with the prior expert ``N(0, I)``.

    Expert ``m`` is ``N(eta_m / p_m, 1 / p_m)`` with precision ``p_m = exp(log_prec_m)``; the product has precision
    ``Lambda = 1 + sum_m p_m`` and mean ``sum_m eta_m / Lambda``.

    Args:
        eta, log_prec: ``[B, M, D]`` (values of unselected experts are ignored).
        mask: ``BoolTensor[B, M]`` (one subset per sample) or ``[B, K, M]`` (``K`` subsets per sample).

    Returns:
        ``(mu_s, logvar_s)``, each ``[B, D]`` or ``[B, K, D]``.
    """
    prec = torch.exp(log_prec)
    w = mask.to(eta.dtype)
    if mask.ndim == 2:
        w = w.unsqueeze(-1)
        lam = 1.0 + (w * prec).sum(1)
        num = (w * eta).sum(1)
    else:
        lam = 1.0 + torch.einsum("bkm,bmd->bkd", w, prec)
        num = torch.einsum("bkm,bmd->bkd", w, eta)
    return num / lam, -torch.log(lam)


def product_of_experts(
    mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of the Gaussian experts ``N(mu_m, diag exp(logvar_m))`` selected by ``mask`` and the prior ``N(0, I)``:
    ``Lambda_s = 1 + sum_m exp(-logvar_m)``, ``mu_s = Lambda_s^-1 sum_m exp(-logvar_m) mu_m``.

    Args:
        mu, logvar: ``[B, M, D]`` expert means and log-variances (values of unselected experts are ignored).
        mask: ``BoolTensor[B, M]`` (one subset per sample) or ``[B, K, M]`` (``K`` subsets per sample).

    Returns:
        ``(mu_s, logvar_s)``, each ``[B, D]`` or ``[B, K, D]``.
    """
    return product_of_natural_experts(torch.exp(-logvar) * mu, -logvar, mask)


def gaussian_kl_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` summed over the last dimension."""
    return 0.5 * (torch.exp(logvar) + mu.pow(2) - 1.0 - logvar).sum(-1)
