"""Left-right asymmetry as an extra input channel: a lesion is where a brain differs from its own mirror image.

A healthy brain is close to symmetric about its mid-sagittal plane; a tumour, its oedema or its enhancement sits on one
side. :class:`MirrorAsymmetry` gives an encoder the image and its difference to the mirrored image, so the lesion stands
out of the anatomy before any filter is learnt (the same anatomy, with a different lesion, is what a small cohort
repeats; an encoder that reads the raw image alone memorises the anatomy + lesion combinations instead).

The mirror plane is the foreground's centre of mass along ``axis`` (background is exactly 0 after the cohort's
``nonzero`` z-scoring and zero padding), so a brain that is not centred in its array is still mirrored about itself.
It assumes ``axis`` is the patient's left-right axis: axis 0 of a RAS-oriented volume (the cohort bundle reorients
every ``image3d`` modality to RAS).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MirrorAsymmetry", "MirrorInputEncoder"]


class MirrorAsymmetry(nn.Module):
    """``[B, C, *S]`` -> ``[B, 2C, *S]``: the image, then the image minus its mirror about the foreground's centre.

    Args:
        axis: the spatial axis mirrored (0 = the first spatial axis, left-right in RAS).
    """

    def __init__(self, axis: int = 0) -> None:
        super().__init__()
        if axis < 0:
            raise ValueError(f"axis must be a spatial axis index >= 0, got {axis}.")
        self.axis = int(axis)

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` mirrored per sample about its foreground centre along ``axis``; voxels mirrored from outside are 0."""
        dim = 2 + self.axis
        if dim >= x.ndim:
            raise ValueError(
                f"MirrorAsymmetry: axis {self.axis} does not exist in a batch of {x.ndim - 2} spatial dimensions."
            )
        n = x.shape[dim]
        pos = torch.arange(n, device=x.device, dtype=torch.float32)
        fg = (x.transpose(1, dim) != 0).to(torch.float32).flatten(2).sum(2)  # [B, n]: foreground voxels per slice
        total = fg.sum(1)
        centre = torch.where(total > 0, (fg * pos).sum(1) / total.clamp_min(1.0), torch.full_like(total, (n - 1) / 2))
        src = torch.round(2 * centre[:, None] - pos[None, :]).to(torch.int64)  # [B, n]: i -> 2c - i
        valid = (src >= 0) & (src < n)
        shape: list[int] = [x.shape[0]] + [1] * (x.ndim - 1)
        shape[dim] = n
        index = src.clamp(0, n - 1).reshape(shape).expand_as(x)
        keep = valid.reshape(shape).to(x.dtype)
        return torch.gather(x, dim, index) * keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x - self.mirror(x)], dim=1)


class MirrorInputEncoder(nn.Module):
    """A token encoder reading ``[image, image - mirror]``: ``[B, C, *S]`` -> the inner encoder's tokens.

    Args:
        encoder: a token encoder built for ``2 * C`` input channels.
        axis: see :class:`MirrorAsymmetry`.
    """

    def __init__(self, encoder: nn.Module, axis: int = 0) -> None:
        super().__init__()
        self.asymmetry = MirrorAsymmetry(axis)
        self.encoder = encoder
        self.in_channels = int(getattr(encoder, "in_channels", 2)) // 2
        self.dim = int(getattr(encoder, "dim", 0))
        self.spatial_dims = int(getattr(encoder, "spatial_dims", 3))
        self.num_tokens: int | None = getattr(encoder, "num_tokens", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.asymmetry(x))
