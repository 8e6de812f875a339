"""Configuration of one modality of the MoPoE recovery network: shape, likelihood and encoder / decoder layout."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModalitySpec"]

_IMAGE_LIKELIHOODS = ("laplace", "gaussian")
_OUTPUT_ACTIVATIONS = (None, "sigmoid", "tanh")


def _tuple_int(v: Any) -> tuple[int, ...]:
    if isinstance(v, int):
        return (int(v),)
    return tuple(int(x) for x in v)


@dataclass
class ModalitySpec:
    """Configuration of one modality of :class:`~monai_dymo.networks.recovery.MoPoERecovery` (every field has a
    config-friendly plain type).

    Args:
        shape: per-patient shape: ``(C, H, W)`` (2D image), ``(C, D, H, W)`` (3D image) or ``(F,)`` (clinical vector).
        likelihood: images: ``"laplace"`` (default) or ``"gaussian"``; vectors: ``"gaussian"`` (default; continuous
            fields; categorical fields always use a categorical likelihood).
        scale: fixed Laplace scale ``b`` / Gaussian ``sigma``; default 0.75 for Laplace, 1.0 for Gaussian.
        weight: weight ``w_m`` of this modality's log-likelihood in the ELBO.
        categorical: vectors only, ``{field index: number of classes}``.
        channels, strides: image encoder (:class:`monai.networks.nets.Regressor`) conv channels / strides.
        decoder_channels, decoder_strides: image decoder (:class:`monai.networks.nets.Generator`); default: the
            encoder's in reverse, ending with the image channels; strides from the end are set to 1 until the
            spatial size is divisible by their product.
        kernel_size, num_res_units, act, norm, dropout: passed to the MONAI blocks.
        hidden: vectors only, hidden widths of the MLP encoder (the decoder uses them reversed).
        output_activation: ``None``, ``"sigmoid"`` (images in [0, 1]) or ``"tanh"``; images only.
    """

    shape: Sequence[int]
    likelihood: str | None = None
    scale: float | None = None
    weight: float = 1.0
    categorical: Mapping[int, int] = field(default_factory=dict)
    channels: Sequence[int] = (32, 64, 128)
    strides: Sequence[int] = (2, 2, 2)
    decoder_channels: Sequence[int] | None = None
    decoder_strides: Sequence[int] | None = None
    kernel_size: int = 3
    num_res_units: int = 0
    act: Any = "leakyrelu"
    norm: Any = None
    dropout: float | None = None
    hidden: Sequence[int] = (128, 128)
    output_activation: str | None = None

    def __post_init__(self) -> None:
        self.shape = _tuple_int(self.shape)
        if self.likelihood is None:
            self.likelihood = "laplace" if len(self.shape) in (3, 4) else "gaussian"
        self.likelihood = str(self.likelihood).lower()
        self.channels = _tuple_int(self.channels)
        self.strides = _tuple_int(self.strides)
        self.hidden = _tuple_int(self.hidden)
        self.categorical = {int(k): int(v) for k, v in dict(self.categorical).items()}
        if len(self.shape) not in (1, 3, 4) or any(s < 1 for s in self.shape):
            raise ValueError(
                f"modality shape must be (F,), (C, H, W) or (C, D, H, W) with positive sizes, got {self.shape}."
            )
        if self.is_image:
            if self.likelihood not in _IMAGE_LIKELIHOODS:
                raise ValueError(f"image likelihood must be one of {_IMAGE_LIKELIHOODS}, got {self.likelihood!r}.")
            if self.categorical:
                raise ValueError("`categorical` fields are only allowed for vector (clinical) modalities.")
            if len(self.channels) == 0 or len(self.channels) != len(self.strides):
                raise ValueError(f"`channels` {self.channels} and `strides` {self.strides} must have the same length.")
            if self.output_activation is not None:
                self.output_activation = str(self.output_activation).lower()
            if self.output_activation not in _OUTPUT_ACTIVATIONS:
                raise ValueError(
                    f"output_activation must be one of {_OUTPUT_ACTIVATIONS}, got {self.output_activation!r}."
                )
            if self.decoder_channels is None:
                self.decoder_channels = tuple(reversed(self.channels[:-1])) + (self.shape[0],)
            self.decoder_channels = _tuple_int(self.decoder_channels)
            if self.decoder_channels[-1] != self.shape[0]:
                raise ValueError(
                    f"the last decoder channel ({self.decoder_channels[-1]}) must equal the image channels "
                    f"({self.shape[0]})."
                )
            if self.decoder_strides is None:
                strides = list(reversed(self.strides))[: len(self.decoder_channels)]
                strides += [1] * (len(self.decoder_channels) - len(strides))
                for i in reversed(range(len(strides))):
                    if all(s % math.prod(strides) == 0 for s in self.shape[1:]):
                        break
                    strides[i] = 1
                self.decoder_strides = tuple(strides)
            self.decoder_strides = _tuple_int(self.decoder_strides)
            if len(self.decoder_strides) != len(self.decoder_channels):
                raise ValueError(
                    f"`decoder_channels` {self.decoder_channels} and `decoder_strides` {self.decoder_strides} "
                    "must have the same length."
                )
            up = math.prod(self.decoder_strides)
            if any(s % up for s in self.shape[1:]):
                raise ValueError(
                    f"image size {self.shape[1:]} is not divisible by the decoder's total upsampling {up} "
                    f"(decoder_strides {self.decoder_strides})."
                )
        else:
            if self.likelihood != "gaussian":
                raise ValueError(
                    "vector (clinical) modalities use a 'gaussian' likelihood for continuous fields, "
                    f"got {self.likelihood!r}."
                )
            num_fields = self.shape[0]
            for idx, k in self.categorical.items():
                if not 0 <= idx < num_fields:
                    raise ValueError(f"categorical field index {idx} out of range for {num_fields} fields.")
                if k < 2:
                    raise ValueError(f"categorical field {idx} needs at least 2 classes, got {k}.")
        if self.scale is None:
            self.scale = 0.75 if self.likelihood == "laplace" else 1.0
        self.scale = float(self.scale)
        if self.scale <= 0:
            raise ValueError(f"likelihood scale must be positive, got {self.scale}.")
        self.weight = float(self.weight)
        if self.weight < 0:
            raise ValueError(f"likelihood weight must be >= 0, got {self.weight}.")

    @classmethod
    def from_config(cls, config: ModalitySpec | Mapping[str, Any]) -> ModalitySpec:
        """Build from a mapping (e.g. a bundle config entry) or return a copy of a spec."""
        if isinstance(config, ModalitySpec):
            return cls(**config.to_config())
        if not isinstance(config, Mapping):
            raise ValueError(f"a modality spec must be a mapping or ModalitySpec, got {type(config).__name__}.")
        cfg = dict(config)
        unknown = [k for k in cfg if k not in cls.__dataclass_fields__]
        if unknown:
            raise ValueError(f"unknown modality spec key(s) {unknown}.")
        if "shape" not in cfg:
            raise ValueError("a modality spec needs a `shape`.")
        return cls(**cfg)

    def to_config(self) -> dict[str, Any]:
        """Plain-type dict that :meth:`from_config` turns back into the same spec."""
        out: dict[str, Any] = {
            "shape": list(self.shape),
            "likelihood": self.likelihood,
            "scale": self.scale,
            "weight": self.weight,
        }
        if self.is_image:
            out.update(
                channels=list(self.channels),
                strides=list(self.strides),
                decoder_channels=list(self.decoder_channels or ()),
                decoder_strides=list(self.decoder_strides or ()),
                kernel_size=self.kernel_size,
                num_res_units=self.num_res_units,
                output_activation=self.output_activation,
            )
        else:
            out.update(categorical={int(k): int(v) for k, v in self.categorical.items()}, hidden=list(self.hidden))
        out.update(act=self.act, norm=self.norm, dropout=self.dropout)
        return out

    @property
    def is_image(self) -> bool:
        return len(self.shape) in (3, 4)

    @property
    def spatial_dims(self) -> int:
        return len(self.shape) - 1

    @property
    def continuous_fields(self) -> list[int]:
        return [i for i in range(self.shape[0]) if i not in self.categorical] if not self.is_image else []

    @property
    def categorical_fields(self) -> list[int]:
        return sorted(self.categorical)

    def block_options(self) -> dict[str, Any]:
        """Options of the MONAI blocks of an image encoder and decoder (kernel size, residual units, activation,
        normalisation, dropout)."""
        return {
            "kernel_size": self.kernel_size,
            "num_res_units": self.num_res_units,
            "act": self.act,
            "norm": self.norm,
            "dropout": self.dropout,
        }

