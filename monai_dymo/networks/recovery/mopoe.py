"""Mixture-of-products-of-experts multimodal VAE (MoPoE; Sutter, Daunhawer & Vogt, ICLR 2021) as a recovery network.

Method (``docs/dymo-method.md`` section 6):

- every modality ``m`` has an encoder giving a diagonal Gaussian expert ``q_m(z | x_m) = N(mu_m, diag sigma_m^2)`` over
  one shared latent ``z`` and a decoder ``p(x_m | z)``;
- the posterior of a subset ``s`` is the product of the experts in ``s`` and the prior expert ``N(0, I)``:
  ``Lambda_s = I + sum_{m in s} sigma_m^-2``, ``mu_s = Lambda_s^-1 sum_{m in s} sigma_m^-2 mu_m``;
- training maximises the generalised multimodal ELBO: ``z`` is drawn from the equal-weight mixture of the subset
  posteriors of all non-empty subsets of the sample's *observed* modalities (one subset drawn per sample, then the
  reparameterisation trick), the reconstruction term covers only the observed modalities, and the KL term is
  ``beta`` times the mean over those subsets of ``KL(q_s || N(0, I))``;
- recovery decodes every missing modality from the posterior mean ``mu_O`` of the observed set ``O``.

Likelihoods (all with a fixed, configurable scale; the log-normalisers are included so ``recon`` is a true NLL):

- images: ``"laplace"`` (default, scale ``b = 0.75`` as in the original MoPoE PolyMNIST setup) or ``"gaussian"``
  (``sigma`` default 1.0), summed over voxels; ``output_activation="sigmoid"`` for images in [0, 1];
- clinical vectors ``[B, F]``: Gaussian (``sigma`` default 1.0, fields expected standardised) for continuous fields and
  categorical (softmax) for the fields listed in ``categorical`` (``{field index: number of classes}``; the tensor holds
  the class index as a float). NaN marks a field missing inside an observed group, and a categorical code ``-1`` a
  category unseen in training (the convention of ``monai_dymo.transforms.ClinicalFieldsd``): either is left out of the
  likelihood and fed to the encoder as 0 together with an observed-field indicator. Recovered categorical fields hold
  the arg-max class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets import FullyConnectedNet, Generator, Regressor
from monai.utils import convert_to_tensor
from torch import nn

from monai_dymo.networks.recovery.base import UNKNOWN_CODE, RecoveryNetwork, check_recovery_inputs, missing_rows
from monai_dymo.subsets import all_subset_masks, mask_to_code

__all__ = [
    "ModalitySpec",
    "MoPoERecovery",
    "product_of_experts",
    "product_of_natural_experts",
    "gaussian_kl_standard",
    "build_polymnist_recovery",
    "build_mri_recovery",
    "MOPOE_CHECKPOINT_FORMAT",
]

#: tag stored in files written by :meth:`MoPoERecovery.save`.
MOPOE_CHECKPOINT_FORMAT = "monai_dymo.MoPoERecovery"
_MOPOE_CHECKPOINT_VERSION = 1

_IMAGE_LIKELIHOODS = ("laplace", "gaussian")
#: encoder output conventions; index = code stored in the state_dict (state_dicts without it are "mean_logvar")
_EXPERT_PARAMETRIZATIONS = ("mean_logvar", "natural")
_PARAM_KEY = "expert_parametrization_code"
_OUTPUT_ACTIVATIONS = (None, "sigmoid", "tanh")


def _tuple_int(v: Any) -> tuple[int, ...]:
    if isinstance(v, int):
        return (int(v),)
    return tuple(int(x) for x in v)


@dataclass
class ModalitySpec:
    """Configuration of one modality of :class:`MoPoERecovery` (every field has a config-friendly plain type).

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


class _ConvEncoder(Regressor):
    """MONAI ``Regressor`` whose last conv block keeps its activation (a linear head follows it)."""

    def _get_layer(self, in_channels: int, out_channels: int, strides: int, is_last: bool) -> nn.Module:
        return super()._get_layer(in_channels, out_channels, strides, False)


class _ConvDecoder(Generator):
    """MONAI ``Generator`` with an activation after its input linear layer and an optional output activation."""

    def __init__(self, *args: Any, output_activation: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.linear_act = get_act_layer(self.act) if self.act is not None else nn.Identity()
        acts = {None: nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
        self.output_act = acts[output_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_act(self.linear(self.flatten(x)))
        return self.output_act(self.conv(self.reshape(x)))


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


class MoPoERecovery(RecoveryNetwork):
    """MoPoE multimodal VAE recovering missing 2D/3D images and clinical vectors from any observed subset.

    Args:
        modalities: modality names (column order of ``present``).
        modality_specs: modality name -> :class:`ModalitySpec` or its config mapping (see :class:`ModalitySpec`).
        latent_dim: size ``D`` of the shared latent.
        beta: weight of the KL term.
        max_kl_subsets: when ``2**M - 1`` exceeds this, the KL mean over subsets is estimated by the KL of the drawn
            subset (an unbiased one-sample estimate) instead of being computed over every subset.
        logvar_bounds: the experts' log-variances are clamped to this range for numerical safety.
        expert_parametrization: what each encoder outputs for its Gaussian expert: ``"mean_logvar"`` (default,
            ``(mu, log sigma^2)``) or ``"natural"`` (``(mu / sigma^2, -log sigma^2)``). Same Gaussian family; the
            natural form is better conditioned for the product of experts: with ``"mean_logvar"`` an expert that wants
            to shift the product's mean while adding almost no precision saturates ``log sigma^2`` at its upper bound
            and grows ``mu`` instead (|mu| ~ 1e4 seen on PolyMNIST; harmless in float32, risky in float16). The choice
            is stored in the state_dict (state_dicts without it are ``"mean_logvar"``), and loading weights trained
            with the other one raises.

    Example::

        net = MoPoERecovery(
            ["t1", "age"],
            {
                "t1": {"shape": [1, 32, 32], "output_activation": "sigmoid"},
                "age": {"shape": [2], "categorical": {1: 2}},
            },
            latent_dim=32,
        )
        recovered = net({"t1": images}, present)   # images [B, 1, 32, 32], present BoolTensor[B, 2]
    """

    def __init__(
        self,
        modalities: Sequence[str],
        modality_specs: Mapping[str, ModalitySpec | Mapping[str, Any]],
        latent_dim: int = 64,
        beta: float = 1.0,
        max_kl_subsets: int = 64,
        logvar_bounds: Sequence[float] = (-10.0, 10.0),
        expert_parametrization: str = "mean_logvar",
    ) -> None:
        if not isinstance(modality_specs, Mapping):
            raise ValueError("`modality_specs` must map modality name -> spec.")
        specs = {str(k): ModalitySpec.from_config(v) for k, v in modality_specs.items()}
        super().__init__(modalities, {k: s.shape for k, s in specs.items()})
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}.")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}.")
        self.specs: dict[str, ModalitySpec] = {m: specs[m] for m in self.modalities}
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.max_kl_subsets = int(max_kl_subsets)
        self.logvar_bounds = (float(logvar_bounds[0]), float(logvar_bounds[1]))
        if expert_parametrization not in _EXPERT_PARAMETRIZATIONS:
            raise ValueError(
                f"expert_parametrization must be one of {_EXPERT_PARAMETRIZATIONS}, got {expert_parametrization!r}."
            )
        self.expert_parametrization = expert_parametrization
        # stored in the state_dict so that weights trained with one parametrisation never load silently into the other
        self.register_buffer(
            _PARAM_KEY, torch.tensor(_EXPERT_PARAMETRIZATIONS.index(expert_parametrization), dtype=torch.int64)
        )
        self.nan_tolerant = tuple(m for m, s in self.specs.items() if not s.is_image)
        self.encoders = nn.ModuleDict({m: self._make_encoder(s) for m, s in self.specs.items()})
        self.decoders = nn.ModuleDict({m: self._make_decoder(s) for m, s in self.specs.items()})
        # the exact mean KL over all subsets is computed while 2**M - 1 <= max_kl_subsets
        self._kl_table_max_modalities = int(math.floor(math.log2(max(self.max_kl_subsets, 1) + 1)))

    # ------------------------------------------------------------------ construction
    def _make_encoder(self, spec: ModalitySpec) -> nn.Module:
        out = 2 * self.latent_dim
        if spec.is_image:
            return _ConvEncoder(
                in_shape=spec.shape,
                out_shape=(out,),
                channels=spec.channels,
                strides=spec.strides,
                kernel_size=spec.kernel_size,
                num_res_units=spec.num_res_units,
                act=spec.act,
                norm=spec.norm,
                dropout=spec.dropout,
            )
        in_dim = len(spec.continuous_fields) + sum(spec.categorical.values()) + spec.shape[0]
        return FullyConnectedNet(in_dim, out, list(spec.hidden), dropout=spec.dropout, act=spec.act)

    def _make_decoder(self, spec: ModalitySpec) -> nn.Module:
        if spec.is_image:
            dec_ch = tuple(spec.decoder_channels or ())
            dec_st = tuple(spec.decoder_strides or ())
            up = math.prod(dec_st)
            start = (spec.channels[-1], *(s // up for s in spec.shape[1:]))
            return _ConvDecoder(
                latent_shape=(self.latent_dim,),
                start_shape=start,
                channels=dec_ch,
                strides=dec_st,
                kernel_size=spec.kernel_size,
                num_res_units=spec.num_res_units,
                act=spec.act,
                norm=spec.norm,
                dropout=spec.dropout,
                output_activation=spec.output_activation,
            )
        out_dim = len(spec.continuous_fields) + sum(spec.categorical.values())
        return FullyConnectedNet(
            self.latent_dim, out_dim, list(reversed(spec.hidden)), dropout=spec.dropout, act=spec.act
        )

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as plain types (``MoPoERecovery(**net.get_config())`` rebuilds the architecture)."""
        return {
            "modalities": list(self.modalities),
            "modality_specs": {m: s.to_config() for m, s in self.specs.items()},
            "latent_dim": self.latent_dim,
            "beta": self.beta,
            "max_kl_subsets": self.max_kl_subsets,
            "logvar_bounds": list(self.logvar_bounds),
            "expert_parametrization": self.expert_parametrization,
        }

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        key = prefix + _PARAM_KEY
        code = int(state_dict[key]) if key in state_dict else 0  # older state_dicts: "mean_logvar"
        own = _EXPERT_PARAMETRIZATIONS.index(self.expert_parametrization)
        if code != own:
            found = _EXPERT_PARAMETRIZATIONS[code] if 0 <= code < len(_EXPERT_PARAMETRIZATIONS) else str(code)
            error_msgs.append(
                f"these MoPoE weights were trained with expert_parametrization={found!r}, but the network was built "
                f"with {self.expert_parametrization!r}; build it with expert_parametrization={found!r}."
            )
        state_dict[key] = torch.tensor(own, dtype=torch.int64)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> None:
        """Write ``{"format", "version", "config", "state_dict"}`` with :func:`torch.save` (loadable with
        ``weights_only=True``)."""
        torch.save(
            {
                "format": MOPOE_CHECKPOINT_FORMAT,
                "version": _MOPOE_CHECKPOINT_VERSION,
                "config": self.get_config(),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            },
            str(path),
        )

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device | None = "cpu") -> MoPoERecovery:
        """Rebuild a network written by :meth:`save`."""
        ckpt = torch.load(str(path), map_location=map_location, weights_only=True)
        if not isinstance(ckpt, Mapping) or ckpt.get("format") != MOPOE_CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a {MOPOE_CHECKPOINT_FORMAT} checkpoint.")
        if int(ckpt.get("version", -1)) > _MOPOE_CHECKPOINT_VERSION:
            raise ValueError(
                f"{path} has checkpoint version {ckpt.get('version')}, newer than supported "
                f"({_MOPOE_CHECKPOINT_VERSION})."
            )
        net = cls(**ckpt["config"])
        net.load_state_dict(ckpt["state_dict"])
        if map_location is not None:
            net.to(map_location)
        return net

    # ------------------------------------------------------------------ building blocks
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @staticmethod
    def _observed_fields(spec: ModalitySpec, x: torch.Tensor) -> torch.Tensor:
        """``BoolTensor[B, F]``: field present (not NaN, and for a categorical field not the unknown code ``-1``)."""
        observed = ~torch.isnan(x)
        for idx in spec.categorical_fields:
            observed[:, idx] &= x[:, idx] != UNKNOWN_CODE
        return observed

    def _encoder_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        spec = self.specs[name]
        x = convert_to_tensor(x, track_meta=False, wrap_sequence=True).to(device=self._device(), dtype=self._dtype())
        if spec.is_image:
            return x
        observed = self._observed_fields(spec, x)
        values = torch.where(observed, x, torch.zeros_like(x))
        parts = []
        cont = spec.continuous_fields
        if cont:
            parts.append(values[:, cont])
        for idx in spec.categorical_fields:
            k = spec.categorical[idx]
            cls_idx = values[:, idx].round().long().clamp(0, k - 1)
            parts.append(F.one_hot(cls_idx, k).to(x.dtype) * observed[:, idx : idx + 1].to(x.dtype))
        parts.append(observed.to(x.dtype))
        return torch.cat(parts, dim=1)

    def encode_natural(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert parameters of the observed rows in the encoders' natural parametrisation.

        ``eta = mu / sigma^2`` and ``log_prec = -log sigma^2`` (log-variances clamped to ``logvar_bounds``), whatever
        the encoders' ``expert_parametrization``.

        Args:
            inputs: validated inputs; present: ``BoolTensor[B, M]``.

        Returns:
            ``(eta, log_prec)``, each ``[B, M, D]``; entries of missing modalities are 0 (they must be masked out).
        """
        device, dtype = self._device(), self._dtype()
        present = present.to(device)
        batch = present.shape[0]
        lo, hi = -self.logvar_bounds[1], -self.logvar_bounds[0]
        etas, log_precs = [], []
        for m, name in enumerate(self.modalities):
            col = present[:, m]
            eta_m = torch.zeros(batch, self.latent_dim, device=device, dtype=dtype)
            lp_m = torch.zeros_like(eta_m)
            if bool(col.any()):
                x = inputs[name]
                all_rows = bool(col.all())
                rows = None if all_rows else torch.nonzero(col, as_tuple=False).flatten()
                xs = x if all_rows else x[rows.to(x.device)]  # type: ignore[union-attr]
                out = self.encoders[name](self._encoder_input(name, xs))
                first, second = out[:, : self.latent_dim], out[:, self.latent_dim :]
                if self.expert_parametrization == "natural":
                    eta_r, lp_r = first, second.clamp(lo, hi)
                else:  # (mu, logvar)
                    lp_r = -second.clamp(*self.logvar_bounds)
                    eta_r = first * torch.exp(lp_r)
                if all_rows:
                    eta_m, lp_m = eta_r, lp_r
                else:
                    eta_m = eta_m.index_copy(0, rows, eta_r)
                    lp_m = lp_m.index_copy(0, rows, lp_r)
            etas.append(eta_m)
            log_precs.append(lp_m)
        return torch.stack(etas, dim=1), torch.stack(log_precs, dim=1)

    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert Gaussians ``q_m(z | x_m)`` of the observed rows as ``(mu, logvar)``, each ``[B, M, D]`` (entries of
        missing modalities are 0 and must be masked out)."""
        eta, log_prec = self.encode_natural(inputs, present)
        return eta * torch.exp(-log_prec), -log_prec

    def posterior(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu_O, logvar_O)`` ``[B, D]`` of the product of the observed experts and the prior."""
        eta, log_prec = self.encode_natural(inputs, present)
        return product_of_natural_experts(eta, log_prec, present.to(eta.device))

    def decode(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """Raw decoder output for modality ``name``: image means ``[n, *shape]`` or, for vectors, continuous means
        followed by categorical logits ``[n, n_cont + sum K]``."""
        return self.decoders[name](z)

    def output_to_mean(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """Turn a raw decoder output into a recovered modality ``[n, *shape]`` (categorical fields -> arg-max class)."""
        spec = self.specs[name]
        if spec.is_image:
            return out
        res = out.new_zeros(out.shape[0], spec.shape[0])
        cont = spec.continuous_fields
        n_cont = len(cont)
        if cont:
            res[:, cont] = out[:, :n_cont]
        off = n_cont
        for idx in spec.categorical_fields:
            k = spec.categorical[idx]
            res[:, idx] = out[:, off : off + k].argmax(dim=1).to(out.dtype)
            off += k
        return res

    def negative_log_likelihood(self, name: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``-log p(x_m | z)`` per row ``[n]`` (NaN fields of vectors are left out)."""
        spec = self.specs[name]
        target = convert_to_tensor(target, track_meta=False, wrap_sequence=True).to(device=out.device, dtype=out.dtype)
        scale = spec.scale
        if spec.is_image:
            diff = (target - out).flatten(1)
            if spec.likelihood == "laplace":
                return (diff.abs() / scale).sum(1) + diff.shape[1] * math.log(2.0 * scale)
            return 0.5 * (diff / scale).pow(2).sum(1) + diff.shape[1] * (math.log(scale) + 0.5 * math.log(2 * math.pi))
        observed = self._observed_fields(spec, target)
        nll = out.new_zeros(out.shape[0])
        cont = spec.continuous_fields
        n_cont = len(cont)
        if cont:
            obs_c = observed[:, cont].to(out.dtype)
            diff = torch.nan_to_num(target[:, cont]) - out[:, :n_cont]
            per = 0.5 * (diff / scale).pow(2) + math.log(scale) + 0.5 * math.log(2 * math.pi)
            nll = nll + (per * obs_c).sum(1)
        off = n_cont
        for idx in spec.categorical_fields:
            k = spec.categorical[idx]
            obs = observed[:, idx]
            val = torch.where(obs, target[:, idx], torch.zeros_like(target[:, idx]))
            cls_idx = val.round().long()
            bad = obs & ((cls_idx < 0) | (cls_idx >= k) | (val != val.round()))
            if bool(bad.any()):
                i = int(torch.nonzero(bad, as_tuple=False)[0, 0])
                raise ValueError(
                    f"row {i}, modality '{name}', categorical field {idx}: expected an integer class in [0, {k - 1}], "
                    f"found {float(target[i, idx])}."
                )
            ce = F.cross_entropy(out[:, off : off + k], cls_idx.clamp(0, k - 1), reduction="none")
            nll = nll + ce * obs.to(out.dtype)
            off += k
        return nll

    # ------------------------------------------------------------------ training objective
    @staticmethod
    def sample_subsets(present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One subset per sample, uniform over the non-empty subsets of its observed set.

        Args:
            present: ``BoolTensor[B, M]`` with at least one True per row.
            generator: optional RNG on ``present``'s device.

        Returns:
            ``BoolTensor[B, M]`` with ``out <= present`` and at least one True per row.
        """
        out = torch.zeros_like(present)
        todo = torch.ones(present.shape[0], dtype=torch.bool, device=present.device)
        while bool(todo.any()):  # rejection of the empty subset: P(reject) = 2**-|O| <= 1/2 per round
            idx = torch.nonzero(todo, as_tuple=False).flatten()
            draw = (torch.rand(idx.numel(), present.shape[1], generator=generator, device=present.device) < 0.5)
            draw = draw & present[idx]
            ok = draw.any(1)
            out[idx[ok]] = draw[ok]
            todo[idx[ok]] = False
        return out

    def elbo(
        self,
        inputs: Mapping[str, torch.Tensor],
        present: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Generalised multimodal (MoPoE) ELBO of a batch; training data may be incomplete.

        Args:
            inputs: modality name -> ``Tensor[B, *shape]`` (missing rows are ignored).
            present: ``BoolTensor[B, M]``, True = observed (at least one per patient).
            generator: optional RNG for the subset draw and the reparameterisation noise (on the network's device).

        Returns:
            ``loss`` (= ``recon + beta * kl``, to minimise), ``recon`` (mean over the batch of the weighted NLL summed
            over the observed modalities), ``kl`` (mean over the batch of the mean KL over the subsets of each
            sample's observed set) and ``recon_<name>`` (mean NLL of each modality over its observed rows; NaN when
            not observed in the batch), all scalars.
        """
        tensors, present = check_recovery_inputs(
            inputs, present, self.modalities, self.modality_shapes, allow_nonfinite=self.nan_tolerant
        )
        device = self._device()
        present = present.to(device)
        eta, log_prec = self.encode_natural(tensors, present)
        chosen = self.sample_subsets(present, generator)  # [B, M], one subset of O per sample
        if self.num_modalities <= self._kl_table_max_modalities:
            subsets = all_subset_masks(self.num_modalities, device=device)  # [K, M], row k = code k + 1
            valid = ~(subsets.unsqueeze(0) & ~present.unsqueeze(1)).any(-1)  # [B, K]: subset within observed set
            masks = subsets.unsqueeze(0).expand(eta.shape[0], -1, -1)
            mu_all, lv_all = product_of_natural_experts(eta, log_prec, masks)
            kl_all = gaussian_kl_standard(mu_all, lv_all)  # [B, K]
            vf = valid.to(eta.dtype)
            kl = (kl_all * vf).sum(1) / vf.sum(1)
            rows = torch.arange(eta.shape[0], device=device)
            idx_s = mask_to_code(chosen) - 1
            mu_s, lv_s = mu_all[rows, idx_s], lv_all[rows, idx_s]
        else:
            mu_s, lv_s = product_of_natural_experts(eta, log_prec, chosen)
            kl = gaussian_kl_standard(mu_s, lv_s)
        eps = torch.randn(mu_s.shape, generator=generator, device=device, dtype=mu_s.dtype)
        z = mu_s + torch.exp(0.5 * lv_s) * eps
        recon = eta.new_zeros(eta.shape[0])
        terms: dict[str, torch.Tensor] = {}
        for m, name in enumerate(self.modalities):
            col = present[:, m]
            if not bool(col.any()):
                terms[f"recon_{name}"] = eta.new_tensor(float("nan"))
                continue
            all_rows = bool(col.all())
            idx = None if all_rows else torch.nonzero(col, as_tuple=False).flatten()
            z_m = z if all_rows else z[idx]
            x = tensors[name]
            target = x if all_rows else x[idx.to(x.device)]  # type: ignore[union-attr]
            nll = self.negative_log_likelihood(name, self.decode(name, z_m), target)
            terms[f"recon_{name}"] = nll.detach().mean()
            w = self.specs[name].weight
            recon = recon + w * nll if all_rows else recon.index_add(0, idx, w * nll)  # type: ignore[arg-type]
        recon_mean, kl_mean = recon.mean(), kl.mean()
        return {"loss": recon_mean + self.beta * kl_mean, "recon": recon_mean, "kl": kl_mean, **terms}

    # ------------------------------------------------------------------ recovery
    def generate(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode every missing modality from the posterior mean ``mu_O`` of the observed experts (deterministic)."""
        mu_o, _ = self.posterior(inputs, present)
        present = present.to(mu_o.device)
        out: dict[str, torch.Tensor] = {}
        for m, name in enumerate(self.modalities):
            rows = missing_rows(present, m)
            if rows.numel() == 0:
                continue
            out[name] = self.output_to_mean(name, self.decode(name, mu_o[rows]))
        return out


def build_polymnist_recovery(
    modalities: Sequence[str] = ("m0", "m1", "m2", "m3", "m4"),
    image_shape: Sequence[int] = (3, 28, 28),
    latent_dim: int = 64,
    beta: float = 1.0,
    channels: Sequence[int] = (32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    likelihood: str = "laplace",
    scale: float = 0.75,
    act: Any = "leakyrelu",
    num_res_units: int = 0,
    expert_parametrization: str = "mean_logvar",
) -> MoPoERecovery:
    """MoPoE for PolyMNIST: ``len(modalities)`` RGB images ``3x28x28`` in [0, 1] (sigmoid output, Laplace likelihood
    with scale 0.75 by default), a shared latent of ``latent_dim``; ``expert_parametrization="natural"`` is
    recommended for new training (see :class:`MoPoERecovery`).

    Encoders: strided convs 28 -> 14 -> 7 -> 4 (``channels``) + linear; decoders: linear -> ``channels[-1]x7x7`` ->
    transposed convs 7 -> 14 -> 28.
    """
    spec = {
        "shape": list(image_shape),
        "likelihood": likelihood,
        "scale": scale,
        "channels": list(channels),
        "strides": list(strides),
        "act": act,
        "num_res_units": num_res_units,
        "output_activation": "sigmoid",
    }
    return MoPoERecovery(
        modalities,
        {m: dict(spec) for m in modalities},
        latent_dim=latent_dim,
        beta=beta,
        expert_parametrization=expert_parametrization,
    )


def build_mri_recovery(
    modalities: Sequence[str] = ("t1", "t1c", "t2", "flair"),
    spatial_size: Sequence[int] = (64, 64, 64),
    latent_dim: int = 128,
    beta: float = 1.0,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2, 2),
    likelihood: str = "gaussian",
    scale: float = 1.0,
    act: Any = "leakyrelu",
    norm: Any = None,
    num_res_units: int = 0,
    clinical: Mapping[str, Mapping[str, Any]] | None = None,
    expert_parametrization: str = "mean_logvar",
) -> MoPoERecovery:
    """MoPoE for single-channel 3D MRI sequences ``1 x D x H x W`` (intensity-normalised, e.g. z-scored brain voxels,
    hence a Gaussian likelihood with ``sigma = scale`` and no output activation), optionally with clinical vector
    modalities given as ``{name: spec mapping}`` (e.g. ``{"clinical": {"shape": [6], "categorical": {0: 2}}}``)."""
    spec = {
        "shape": [1, *spatial_size],
        "likelihood": likelihood,
        "scale": scale,
        "channels": list(channels),
        "strides": list(strides),
        "act": act,
        "norm": norm,
        "num_res_units": num_res_units,
    }
    specs: dict[str, Any] = {m: dict(spec) for m in modalities}
    names = list(modalities)
    for name, cfg in (clinical or {}).items():
        specs[name] = dict(cfg)
        names.append(name)
    return MoPoERecovery(
        names, specs, latent_dim=latent_dim, beta=beta, expert_parametrization=expert_parametrization
    )
