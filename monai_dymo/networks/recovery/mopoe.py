"""Mixture-of-products-of-experts multimodal VAE (MoPoE; Sutter, Daunhawer & Vogt, ICLR 2021) as a recovery network.

Method (``docs/method.md`` §6):

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
from pathlib import Path
from typing import Any

import torch
from monai.utils import convert_to_tensor
from torch import nn

from monai_dymo.networks.recovery.base import RecoveryNetwork, check_recovery_inputs, missing_rows
from monai_dymo.networks.recovery.gaussian_experts import (
    gaussian_kl_standard,
    product_of_experts,
    product_of_natural_experts,
)
from monai_dymo.networks.recovery.modality_likelihood import (
    encoder_input,
    negative_log_likelihood,
    output_to_mean,
)
from monai_dymo.networks.recovery.modality_networks import build_modality_decoder, build_modality_encoder
from monai_dymo.networks.recovery.modality_spec import ModalitySpec
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

#: encoder output conventions; index = code stored in the state_dict (state_dicts without it are "mean_logvar")
_EXPERT_PARAMETRIZATIONS = ("mean_logvar", "natural")
_PARAM_KEY = "expert_parametrization_code"


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
        self.encoders = nn.ModuleDict({m: build_modality_encoder(s, self.latent_dim) for m, s in self.specs.items()})
        self.decoders = nn.ModuleDict({m: build_modality_decoder(s, self.latent_dim) for m, s in self.specs.items()})
        # the exact mean KL over all subsets is computed while 2**M - 1 <= max_kl_subsets
        self._kl_table_max_modalities = int(math.floor(math.log2(max(self.max_kl_subsets, 1) + 1)))

    # ------------------------------------------------------------------ configuration
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
        code = int(state_dict[key]) if key in state_dict else 0  # state_dicts without the code: "mean_logvar"
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

    def _encoder_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = convert_to_tensor(x, track_meta=False, wrap_sequence=True).to(device=self._device(), dtype=self._dtype())
        return encoder_input(self.specs[name], x)

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
        return output_to_mean(self.specs[name], out)

    def negative_log_likelihood(self, name: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``-log p(x_m | z)`` per row ``[n]`` (NaN fields of vectors are left out)."""
        return negative_log_likelihood(self.specs[name], out, target, name)

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
    """Preset of :func:`~monai_dymo.networks.recovery.build_recovery` for PolyMNIST: RGB images ``3x28x28`` in
    [0, 1] (sigmoid output, Laplace likelihood with scale 0.75), strided convs 28 -> 14 -> 7 -> 4 (``channels``)."""
    from monai_dymo.networks.recovery.builder import build_recovery

    entries = [{"name": m, "kind": "image2d", "spatial_size": image_shape[1:], "channels": image_shape[0],
                "unit_range": True} for m in modalities]
    options = {"likelihood": likelihood, "scale": scale, "act": act, "num_res_units": num_res_units}
    return build_recovery(entries, latent_dim, beta, expert_parametrization, channels_2d=channels, strides_2d=strides,
                          image_options=options)


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
    clinical: Sequence[Mapping[str, Any]] = (),
    expert_parametrization: str = "mean_logvar",
) -> MoPoERecovery:
    """Preset of :func:`~monai_dymo.networks.recovery.build_recovery` for single-channel 3D MRI sequences
    ``1 x D x H x W`` (z-scored, Gaussian likelihood with ``sigma = scale``), then the ``clinical`` entries
    (modality spec mappings, e.g. ``{"name": "clinical", "kind": "clinical", "num_continuous": 2,
    "categorical": [2]}``)."""
    from monai_dymo.networks.recovery.builder import build_recovery

    entries = [{"name": m, "kind": "image3d", "spatial_size": spatial_size} for m in modalities] + list(clinical)
    options = {"likelihood": likelihood, "scale": scale, "act": act, "norm": norm, "num_res_units": num_res_units}
    return build_recovery(entries, latent_dim, beta, expert_parametrization, channels_3d=channels, strides_3d=strides,
                          image_options=options)
