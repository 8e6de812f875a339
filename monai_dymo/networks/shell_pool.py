"""Radial shell pooling: the tokens of a lesion-centred region of interest are its concentric shells.

In a region of interest cut around a lesion (:class:`~monai_dymo.transforms.GuidedROICropd`) what tells lesions apart
is how the tissue changes with the distance from the lesion: core, rim, oedema, the tissue around it (the intra- and
peritumoral rings of radiomics). :class:`RadialShellPool` averages a feature map ``[B, C, *S]`` over ``num_shells``
concentric shells of equal width about the centre of the grid, giving ``[B, C, num_shells]``: one token per shell,
in order from the centre out. The tokens do not depend on the direction from the centre, so a network cannot tell
patients apart by where around the lesion a detail lies (fewer ways to memorise a small cohort), only by how far.

The shells split the radius of the largest sphere inside the grid (half its smallest side, in voxels); the last shell
also takes the corners outside that sphere.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["RadialShellPool", "shell_index", "shell_membership"]


def shell_index(spatial_shape: list[int], num_shells: int, device: torch.device) -> torch.Tensor:
    """Shell of every voxel of a grid of ``spatial_shape`` (2 or 3 dims), flattened: int64 ``[prod(spatial_shape)]``
    in ``0 .. num_shells - 1``, 0 at the centre of the grid."""
    dist2 = torch.zeros([1], device=device)
    for i, n in enumerate(spatial_shape):
        coord = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2.0
        view = [1] * len(spatial_shape)
        view[i] = n
        dist2 = dist2 + coord.reshape(view) ** 2
    radius = max(float(min(spatial_shape)) / 2.0, 1e-6)
    shell = torch.floor(dist2.sqrt() / radius * num_shells).to(torch.int64)
    return shell.clamp(0, num_shells - 1).reshape(-1)


def shell_membership(spatial_shape: list[int], num_shells: int, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    """One-hot shell of every voxel of a grid (see :func:`shell_index`): ``[prod(spatial_shape), num_shells]``."""
    shell = shell_index(spatial_shape, num_shells, device)
    member = torch.zeros(shell.numel(), num_shells, device=device, dtype=dtype)
    member[torch.arange(shell.numel(), device=device), shell] = 1.0
    return member


class RadialShellPool(nn.Module):
    """Average ``[B, C, *S]`` over ``num_shells`` concentric shells about the grid's centre -> ``[B, C, num_shells]``.

    A shell without a voxel (a grid too small for that many shells) gives zeros.

    Args:
        num_shells: number of shells (tokens), >= 1.
    """

    def __init__(self, num_shells: int) -> None:
        super().__init__()
        if int(num_shells) < 1:
            raise ValueError(f"num_shells must be >= 1, got {num_shells}.")
        self.num_shells = int(num_shells)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *S]`` -> ``[B, C, num_shells]``."""
        weights = shell_membership([int(s) for s in x.shape[2:]], self.num_shells, x.device, x.dtype)
        weights = weights / weights.sum(0, keepdim=True).clamp_min(1.0)
        return torch.matmul(x.flatten(2), weights)
