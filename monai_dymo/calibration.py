"""Per-subset calibration of a trained fusion network (DyMo method, section 3).

For every non-empty modality subset ``S`` (identified by its bitmask code, see :mod:`monai_dymo.subsets`) and class
``c`` the calibration stores

- ``prototypes[S, c]`` = ``mu_{S,c}``, the mean projection ``z(S)`` of the training samples of class ``c``;
- ``sigma[S, c]``, the spread of the distances ``d`` of those samples to ``mu_{S,c}``: the *population* standard
  deviation of the symmetrised sample ``{d} U {-d}`` (``2n`` values, mean exactly 0), so that for both metrics
  ``sigma**2 = sum(d**2) / n`` (numpy's default ``ddof=0``, as the reference computes it), with

  - cosine metric: ``d = 1 - z . mu``;
  - Euclidean metric: ``d = ||z - mu||`` (not squared);

- ``overall[c]`` = ``P_c``, the mean over all non-empty subsets of ``mu_{S,c}`` (kept as a plain mean, *not*
  re-normalised, exactly as the method states).

Row 0 of ``prototypes`` / ``sigma`` (the empty subset) is unused; :func:`fit_calibration` fills it with NaN so that an
accidental use cannot go unnoticed.

**Naturally incomplete training data.** A pair ``(S, c)`` has statistics only if some training patient of class ``c``
has every modality of ``S`` observed. When a pair has fewer than ``min_samples`` such patients (default 1: only empty
pairs), :func:`fit_calibration` *falls back*: ``mu_{S,c}`` and ``sigma_{S,c}`` are pooled over the largest proper
subsets ``T`` of ``S`` that do have enough class-``c`` patients (``mu`` = count-weighted mean of ``mu_{T,c}``,
``sigma**2`` = count-weighted mean of ``sigma_{T,c}**2``, i.e. the class's statistics on the nearest smaller modality
sets the network was actually run on); if no subset of ``S`` has any, they are pooled the same way over every subset
with class-``c`` patients. Fallback pairs are recorded in :attr:`SubsetCalibration.fallback` (saved with the file),
are left out of the overall prototypes ``P_c``, and the selection flags every patient whose scores used one
(``SelectionResult.calibration_fallback``). Only a class with no training patient at all is an error. With complete
training data nothing falls back and the result is exactly the method's.

This module never imports networks: :func:`fit_calibration` takes ``encode`` / ``fuse`` callables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F

from monai.networks.utils import eval_mode

from .distributed import all_reduce_
from .keys import DyMoKeys
from .presence import align_present
from .similarity import METRICS, check_metric
from .subsets import all_subset_masks, code_to_mask

__all__ = ["SubsetCalibration", "fit_calibration", "CALIBRATION_FORMAT_VERSION", "METRICS"]

CALIBRATION_FORMAT_VERSION = 2
"""Version 2: population sigma (``sum d**2 / n``) for both metrics and the ``fallback`` mask; version-1 files
(unbiased sigma) are refused: refit them with :func:`fit_calibration`."""

#: sum-of-outer-products buffers larger than this make ``strategy="auto"`` fall back to two passes.
_MOMENTS_MAX_BYTES = 256 * 2**20


def _subset_names(code: int, modalities: Sequence[str] | None, num_modalities: int) -> str:
    mask = code_to_mask(code, num_modalities).tolist()
    names = [modalities[m] if modalities is not None else str(m) for m in range(num_modalities) if mask[m]]
    return "{" + ", ".join(names) + "}"


class SubsetCalibration:
    """Subset-specific class prototypes and distance spreads (method section 3).

    Args:
        prototypes: ``Tensor[2**M, C, D]``, ``mu_{S,c}`` indexed by subset code (row 0 unused).
        sigma: ``Tensor[2**M, C]``, ``sigma_{S,c}`` (row 0 unused); must be finite and > 0 for every non-empty subset.
        overall: ``Tensor[C, D]`` overall prototypes ``P``; defaults to the plain mean of ``prototypes[1:]``
            over subsets.
        metric: ``"cosine"`` (``d = 1 - z . mu``) or ``"euclidean"`` (``d = ||z - mu||``).
        modalities: optional modality names (length ``M``, bit ``m`` of a code = ``modalities[m]``).
        fallback: optional ``BoolTensor[2**M, C]``, True where ``(S, c)`` had too few training samples and its statistics
            were pooled from other subsets (see the module docstring); default: no fallback.
        certification: optional held-out certification (:func:`monai_dymo.certification.certify`: the certified
            reward margin, its tests with counts and p-values, and the held-out outcome vectors used by the refer
            rule); saved with the file. Files without it load as before (``None``).
        probability_temperature: temperature ``T`` of the calibrated class probabilities ``softmax(logits / T)``
            (temperature scaling of DyMo's final logits, fitted on labelled held-out patients by
            :func:`monai_dymo.certification.fit_probability_temperature`); saved with the file; 1.0 (the raw softmax)
            for files without it. Not the quality score's temperature ``tau``.

    All tensors are stored as float64 (they are small); use :meth:`to` to move them to a device.
    """

    def __init__(
        self,
        prototypes: torch.Tensor,
        sigma: torch.Tensor,
        overall: torch.Tensor | None = None,
        metric: str = "cosine",
        modalities: Sequence[str] | None = None,
        fallback: torch.Tensor | None = None,
        certification: Mapping[str, Any] | None = None,
        probability_temperature: float = 1.0,
    ) -> None:
        prototypes = torch.as_tensor(prototypes)
        sigma = torch.as_tensor(sigma, device=prototypes.device)
        if prototypes.ndim != 3:
            raise ValueError(f"prototypes must be [2**M, C, D], got shape {tuple(prototypes.shape)}.")
        rows = prototypes.shape[0]
        num_modalities = int(round(math.log2(rows))) if rows > 1 else 0
        if rows < 2 or 2**num_modalities != rows:
            raise ValueError(f"prototypes must have 2**M rows (one per subset code), got {rows}.")
        if sigma.shape != prototypes.shape[:2]:
            raise ValueError(
                f"sigma must be [2**M, C] = {tuple(prototypes.shape[:2])} to match prototypes, "
                f"got {tuple(sigma.shape)}."
            )
        metric = check_metric(metric)
        if modalities is not None:
            modalities = tuple(str(m) for m in modalities)
            if len(modalities) != num_modalities:
                raise ValueError(
                    f"{len(modalities)} modality names {modalities} given for a calibration of "
                    f"{num_modalities} modalities."
                )
            if len(set(modalities)) != len(modalities):
                raise ValueError(f"modality names must be unique, got {modalities}.")
        prototypes = prototypes.to(torch.float64)
        sigma = sigma.to(torch.float64)
        bad_mu = ~torch.isfinite(prototypes[1:]).all(-1)
        bad_sigma = ~(torch.isfinite(sigma[1:]) & (sigma[1:] > 0))
        for bad, what in ((bad_mu, "prototypes are not finite"), (bad_sigma, "sigma is not finite and > 0")):
            if bad.any():
                code, cls = (int(v) for v in bad.nonzero()[0])
                raise ValueError(
                    f"calibration {what} for subset {_subset_names(code + 1, modalities, num_modalities)} "
                    f"(code {code + 1}), class {cls}."
                )
        if overall is None:
            overall = prototypes[1:].mean(0)
        overall = torch.as_tensor(overall, device=prototypes.device).to(torch.float64)
        if overall.shape != prototypes.shape[1:]:
            raise ValueError(f"overall must be [C, D] = {tuple(prototypes.shape[1:])}, got {tuple(overall.shape)}.")
        self.prototypes = prototypes
        self.sigma = sigma
        if fallback is None:
            fallback = torch.zeros(prototypes.shape[:2], dtype=torch.bool, device=prototypes.device)
        fallback = torch.as_tensor(fallback, device=prototypes.device).to(torch.bool)
        if fallback.shape != prototypes.shape[:2]:
            raise ValueError(f"fallback must be [2**M, C] = {tuple(prototypes.shape[:2])}, got {tuple(fallback.shape)}.")
        self.overall = overall
        self.metric = metric
        self.modalities: tuple[str, ...] | None = modalities
        self.fallback = fallback
        self.certification: dict[str, Any] | None = None if certification is None else dict(certification)
        probability_temperature = float(probability_temperature)
        if not (math.isfinite(probability_temperature) and probability_temperature > 0):
            raise ValueError(f"probability_temperature must be finite and > 0, got {probability_temperature}.")
        self.probability_temperature = probability_temperature

    # ------------------------------------------------------------------ properties
    @property
    def num_modalities(self) -> int:
        return int(round(math.log2(self.prototypes.shape[0])))

    @property
    def num_classes(self) -> int:
        return int(self.prototypes.shape[1])

    @property
    def proj_dim(self) -> int:
        return int(self.prototypes.shape[2])

    @property
    def device(self) -> torch.device:
        return self.prototypes.device

    def to(self, device: torch.device | str | None) -> SubsetCalibration:
        """Return the calibration on ``device`` (``self`` if it is already there)."""
        if device is None or torch.device(device) == self.device:
            return self
        out = SubsetCalibration.__new__(SubsetCalibration)
        out.prototypes = self.prototypes.to(device)
        out.sigma = self.sigma.to(device)
        out.overall = self.overall.to(device)
        out.fallback = self.fallback.to(device)
        out.metric = self.metric
        out.modalities = self.modalities
        out.certification = self.certification
        out.probability_temperature = self.probability_temperature
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_modalities={self.num_modalities}, num_classes={self.num_classes}, "
            f"proj_dim={self.proj_dim}, metric={self.metric!r}, modalities={self.modalities})"
        )

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "format_version": CALIBRATION_FORMAT_VERSION,
            "metric": self.metric,
            "modalities": list(self.modalities) if self.modalities is not None else None,
            "prototypes": self.prototypes.cpu(),
            "sigma": self.sigma.cpu(),
            "overall": self.overall.cpu(),
            "fallback": self.fallback.cpu(),
            "probability_temperature": self.probability_temperature,
            **({} if self.certification is None else {"certification": self.certification}),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the calibration to one file (``torch.save`` of a plain dict; store it next to the model weights)."""
        torch.save(self.state_dict(), os.fspath(path))

    def fallback_pairs(self) -> list[tuple[str, int]]:
        """``[(subset names, class), ...]`` of the pairs whose statistics fell back (empty for complete data)."""
        return [
            (_subset_names(int(code), self.modalities, self.num_modalities), int(cls))
            for code, cls in self.fallback.nonzero().tolist()
        ]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], source: str | None = None) -> SubsetCalibration:
        """Build from :meth:`state_dict` output; ``source`` (e.g. the file name) is named in errors."""
        where = f"calibration {source}" if source else "calibration"
        version = state.get("format_version")
        if version != CALIBRATION_FORMAT_VERSION:
            hint = (
                " Version 1 files used the unbiased sigma, which docs/method.md no longer specifies; refit the "
                "calibration (e.g. the bundle's calibrate config) to get a version-2 file."
                if version == 1
                else ""
            )
            raise ValueError(
                f"{where}: unsupported calibration format version {version!r} "
                f"(this monai_dymo reads {CALIBRATION_FORMAT_VERSION}).{hint}"
            )
        try:
            return cls(
                prototypes=state["prototypes"],
                sigma=state["sigma"],
                overall=state["overall"],
                metric=state["metric"],
                modalities=state["modalities"],
                fallback=state.get("fallback"),
                certification=state.get("certification"),
                probability_temperature=state.get("probability_temperature", 1.0),
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: torch.device | str | None = None) -> SubsetCalibration:
        """Read a file written by :meth:`save`."""
        path = os.fspath(path)
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - pickle / zip errors: name the file, keep the cause
            raise ValueError(f"calibration {path}: not a readable calibration file ({type(e).__name__}: {e}).") from e
        if not isinstance(state, Mapping) or "prototypes" not in state:
            raise ValueError(f"calibration {path}: not a monai_dymo calibration file.")
        return cls.from_state_dict(state, source=path)

    @classmethod
    def fit(cls, encode: Callable, fuse: Callable, loader: Iterable, **kwargs: Any) -> SubsetCalibration:
        """Alias of :func:`fit_calibration`."""
        return fit_calibration(encode, fuse, loader, **kwargs)


# ---------------------------------------------------------------------- fitting
def _owner_modules(*fns: Callable) -> list[torch.nn.Module]:
    mods: list[torch.nn.Module] = []
    for fn in fns:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module) and all(owner is not m for m in mods):
            mods.append(owner)
    return mods


def _labels(batch: Mapping, label_key: str, num_classes: int, batch_size: int, device: torch.device) -> torch.Tensor:
    if label_key not in batch:
        raise ValueError(f"batch has no label key {label_key!r} (keys: {sorted(batch)}).")
    y = torch.as_tensor(batch[label_key])
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1 and y.shape[0] == batch_size:
        y = y.argmax(1)  # one-hot labels
    y = y.reshape(-1)
    if y.numel() != batch_size:
        raise ValueError(f"labels {label_key!r} have {y.numel()} values for a batch of {batch_size} samples.")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ValueError(f"labels {label_key!r} must be integer class indices, got non-integer values.")
    y = y.long()
    if ((y < 0) | (y >= num_classes)).any():
        raise ValueError(f"labels must be in [0, {num_classes - 1}], found {y.min().item()}..{y.max().item()}.")
    return y.to(device)


def _present(batch: Mapping, present_key: str | None, keys: Sequence[str], batch_size: int, device: torch.device):
    if present_key is None or present_key not in batch:
        return None
    num_modalities = len(keys)
    present = align_present(batch[present_key], keys, "fit_calibration")
    if present.shape != (batch_size, num_modalities):
        raise ValueError(
            f"{present_key!r} must be [B, M] = {(batch_size, num_modalities)}, got {tuple(present.shape)}."
        )
    return present.to(device=device, dtype=torch.bool)


def fit_calibration(
    encode: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]],
    fuse: Callable[[Mapping[str, torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    loader: Iterable[Mapping[str, Any]],
    *,
    modalities: Sequence[str],
    num_classes: int,
    input_keys: Sequence[str] | Mapping[str, str] | None = None,
    label_key: str = DyMoKeys.LABEL,
    present_key: str | None = DyMoKeys.PRESENT,
    metric: str = "cosine",
    device: torch.device | str | None = None,
    progress: bool = True,
    strategy: str = "auto",
    min_sigma: float = 1e-6,
    min_samples: int = 1,
) -> SubsetCalibration:
    """Fit a :class:`SubsetCalibration` on training data (method section 3).

    The fusion network runs on every batch for all ``2**M - 1`` subsets; the encoders run once per batch.
    Statistics are accumulated per (subset, class) in float64, so the projections are never all held in memory:

    - ``strategy="moments"`` (cosine only, one pass): with ``d = 1 - z . mu``,
      ``sum d**2 = n - 2 mu . sum(z) + mu^T (sum z z^T) mu``; keeps ``sum z z^T`` ([2**M, C, D, D]).
    - ``strategy="two_pass"``: pass 1 computes ``mu``, pass 2 accumulates ``sum d`` / ``sum d**2``; the loader must be
      re-iterable and deterministic (no random augmentation). Always used for the Euclidean metric.
    - ``strategy="auto"``: ``"moments"`` for cosine when its buffer is <= 256 MiB, else ``"two_pass"``.

    Args:
        encode, fuse: the network's ``encode(inputs) -> tokens`` and ``fuse(tokens, subset[B, M]) -> (logits, z)``.
            If they are bound methods of an ``nn.Module``, it is put in eval mode during the fit.
        loader: iterable of batch dictionaries (one tensor ``[B, ...]`` per modality, labels ``[B]``).
        modalities: modality names, in the network's order.
        num_classes: ``C``.
        input_keys: batch keys holding the modalities (same order as ``modalities`` or a ``{modality: key}`` map);
            default: the modality names.
        label_key: batch key of the integer class labels (one-hot ``[B, C]`` labels are accepted too).
        present_key: batch key of ``present`` ``[B, M]``; when the batch has it, a sample only contributes to the
            subsets whose modalities it has all observed. ``None`` treats every sample as complete.
        metric: ``"cosine"`` or ``"euclidean"``.
        device: where to run (default: the device of the owning module's parameters, else CPU).
        progress: show a tqdm progress bar.
        strategy: ``"auto"``, ``"moments"`` or ``"two_pass"`` (see above).
        min_sigma: floor applied to ``sigma`` (only matters when all samples of a class sit exactly on ``mu``).
        min_samples: a ``(subset, class)`` pair with fewer training samples than this falls back to pooled statistics
            (see the module docstring; default 1: only pairs with no sample). With complete training data and the
            default, nothing falls back.

    Raises:
        ValueError: a class has no training sample at all, a batch is malformed, ...
    """
    metric = check_metric(metric)
    modalities = tuple(str(m) for m in modalities)
    num_modalities = len(modalities)
    if num_modalities == 0:
        raise ValueError("at least one modality is required.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if input_keys is None:
        key_of = {m: m for m in modalities}
    elif isinstance(input_keys, Mapping):
        key_of = {m: input_keys.get(m, m) for m in modalities}
    else:
        input_keys = list(input_keys)
        if len(input_keys) != num_modalities:
            raise ValueError(f"input_keys has {len(input_keys)} entries for {num_modalities} modalities {modalities}.")
        key_of = dict(zip(modalities, input_keys))
    if strategy not in ("auto", "moments", "two_pass"):
        raise ValueError(f"strategy must be 'auto', 'moments' or 'two_pass', got {strategy!r}.")
    if strategy == "moments" and metric != "cosine":
        raise ValueError("strategy='moments' is only available for the cosine metric (Euclidean needs two passes).")

    modules = _owner_modules(encode, fuse)
    if device is None:
        params = [p for m in modules for p in m.parameters()]
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)

    masks = all_subset_masks(num_modalities, device=device)  # [2**M - 1, M], row i = code i + 1
    rows = 2**num_modalities
    C = num_classes
    count = torch.zeros(rows, C, dtype=torch.float64, device=device)
    sum_z: torch.Tensor | None = None
    sum_zz: torch.Tensor | None = None
    use_moments: bool | None = None if strategy == "auto" else strategy == "moments"
    if metric == "euclidean":
        use_moments = False

    def batches(desc: str):
        from tqdm.auto import tqdm

        from monai_dymo._console import bar_disabled

        yield from tqdm(loader, desc=desc, disable=bar_disabled(progress), leave=False)

    def run_batch(batch: Mapping) -> Iterable[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield ``(code, z[n, D] float64, y[n])`` for every non-empty subset."""
        if not isinstance(batch, Mapping):
            raise ValueError(f"fit_calibration expects batches as dictionaries, got {type(batch).__name__}.")
        missing = [f"{m} (key {key_of[m]!r})" for m in modalities if key_of[m] not in batch]
        if missing:
            raise ValueError(f"batch is missing modalities {missing}; keys: {sorted(batch)}.")
        inputs = {m: torch.as_tensor(batch[key_of[m]]).to(device) for m in modalities}
        batch_size = next(iter(inputs.values())).shape[0]
        for m, x in inputs.items():
            if x.shape[0] != batch_size:
                raise ValueError(f"modality {m!r} has batch size {x.shape[0]}, expected {batch_size}.")
        y = _labels(batch, label_key, C, batch_size, device)
        present = _present(batch, present_key, [key_of[m] for m in modalities], batch_size, device)
        tokens = encode(inputs)
        for i in range(masks.shape[0]):
            mask = masks[i]
            if present is None:
                rows_idx = None
                tok, yy, n = tokens, y, batch_size
            else:
                rows_idx = (present | ~mask).all(1).nonzero().squeeze(1)
                n = rows_idx.numel()
                if n == 0:
                    continue
                tok = {k: v.index_select(0, rows_idx) for k, v in tokens.items()}
                yy = y.index_select(0, rows_idx)
            logits, z = fuse(tok, mask.expand(n, num_modalities))
            if z.ndim != 2 or z.shape[0] != n or logits.shape != (n, C):
                raise ValueError(
                    f"fuse returned logits {tuple(logits.shape)} / z {tuple(z.shape)}, expected [{n}, {C}] / [{n}, D]."
                )
            yield i + 1, z.to(torch.float64), yy

    with ExitStack() as stack:
        for mod in modules:
            stack.enter_context(eval_mode(mod))
        stack.enter_context(torch.no_grad())

        # ---- pass 1: counts, sum z (and sum z z^T)
        for batch in batches("calibration"):
            for code, z, y in run_batch(batch):
                D = z.shape[1]
                if sum_z is None:
                    sum_z = torch.zeros(rows, C, D, dtype=torch.float64, device=device)
                    if use_moments is None:
                        use_moments = metric == "cosine" and rows * C * D * D * 8 <= _MOMENTS_MAX_BYTES
                    if use_moments:
                        sum_zz = torch.zeros(rows, C, D, D, dtype=torch.float64, device=device)
                elif D != sum_z.shape[-1]:
                    raise ValueError(f"fuse returned projections of width {D}, earlier {sum_z.shape[-1]}.")
                onehot = F.one_hot(y, C).to(torch.float64)  # [n, C]
                count[code] += onehot.sum(0)
                sum_z[code] += onehot.T @ z
                if sum_zz is not None:
                    weighted = (onehot[:, :, None] * z[:, None, :]).reshape(z.shape[0], -1)  # [n, C*D]
                    sum_zz[code] += (weighted.T @ z).reshape(C, D, D)
        all_reduce_(count, sum_z, sum_zz)  # torchrun: sums over every rank's shard (each rank needs one batch)
        if sum_z is None:
            raise ValueError("the calibration loader yielded no samples.")

        _check_counts(count, modalities)
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}.")
        n = count[1:]
        fitted = n >= min_samples  # [2**M - 1, C]; the other pairs fall back after sigma is known
        thin = (~fitted).all(0).nonzero().squeeze(1).tolist()
        if thin:
            raise ValueError(
                f"class(es) {thin} have fewer than {min_samples} training samples for every modality subset; "
                "lower min_samples or add training patients."
            )
        mu = torch.full_like(sum_z, float("nan"))
        mu[1:] = sum_z[1:] / n.clamp_min(1)[..., None]

        if use_moments:
            assert sum_zz is not None
            m1 = mu[1:]
            sum_d2 = n - 2 * (m1 * sum_z[1:]).sum(-1) + torch.einsum("sci,scij,scj->sc", m1, sum_zz[1:], m1)
            sum_d2 = sum_d2.clamp_min(0)
            var = sum_d2 / n.clamp_min(1)
        else:
            # ---- pass 2: distances to mu
            count2 = torch.zeros_like(count)
            sum_d = torch.zeros_like(count)
            sum_d2_t = torch.zeros_like(count)
            for batch in batches("calibration (pass 2)"):
                for code, z, y in run_batch(batch):
                    mu_y = mu[code].index_select(0, y)  # [n, D]
                    if metric == "cosine":
                        d = 1 - (z * mu_y).sum(-1)
                    else:
                        d = (z - mu_y).norm(dim=-1)
                    onehot = F.one_hot(y, C).to(torch.float64)
                    count2[code] += onehot.sum(0)
                    sum_d[code] += onehot.T @ d
                    sum_d2_t[code] += onehot.T @ (d * d)
            all_reduce_(count2, sum_d, sum_d2_t)
            if not torch.equal(count2, count):
                raise ValueError(
                    "the loader yielded different samples in the second calibration pass; two-pass calibration needs "
                    "a re-iterable, deterministic loader (no shuffling-dependent subsets, no random augmentation)."
                )
            # symmetrised sample {d} u {-d}: mean 0, population variance sum(d**2) / n (both metrics)
            var = sum_d2_t[1:] / n.clamp_min(1)

    var = torch.where(fitted, var, torch.full_like(var, float("nan")))
    mu[1:][~fitted] = float("nan")
    mu[1:], var = _fall_back(mu[1:], var, n, fitted)
    sigma = torch.full_like(count, float("nan"))
    sigma[1:] = var.sqrt().clamp_min(min_sigma)
    fallback = torch.zeros_like(count, dtype=torch.bool)
    fallback[1:] = ~fitted
    overall = (mu[1:] * fitted[..., None]).sum(0) / fitted.sum(0).clamp_min(1)[:, None].to(mu.dtype)
    return SubsetCalibration(mu, sigma, overall=overall, metric=metric, modalities=modalities, fallback=fallback)


def _fall_back(
    mu: torch.Tensor, var: torch.Tensor, n: torch.Tensor, fitted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the pairs that are not ``fitted`` (``[2**M - 1, C]``, row ``i`` = subset code ``i + 1``) with statistics
    pooled (count-weighted) over the largest proper subsets with fitted statistics for the class, else over every
    fitted subset of the class. ``mu`` ``[2**M - 1, C, D]``, ``var`` / ``n`` ``[2**M - 1, C]``."""
    if bool(fitted.all()):
        return mu, var
    mu, var = mu.clone(), var.clone()
    codes = torch.arange(1, fitted.shape[0] + 1).tolist()
    for code, cls in (~fitted).nonzero().tolist():
        target = code + 1
        cls_fitted = fitted[:, cls]
        proper = [c for c in codes if c != target and c & target == c and bool(cls_fitted[c - 1])]
        if proper:
            largest = max(bin(c).count("1") for c in proper)
            sources = [c for c in proper if bin(c).count("1") == largest]
        else:
            sources = [c for c in codes if bool(cls_fitted[c - 1])]
        rows = torch.tensor([c - 1 for c in sources], device=mu.device)
        w = n[rows, cls]
        w = w / w.sum()
        mu[code, cls] = (w[:, None] * mu[rows, cls]).sum(0)
        var[code, cls] = (w * var[rows, cls]).sum()
    return mu, var


def _check_counts(count: torch.Tensor, modalities: Sequence[str]) -> None:
    n = count[1:]
    if (n > 0).all():
        return
    never = (n == 0).all(0).nonzero().squeeze(1).tolist()
    if never:
        raise ValueError(
            f"class(es) {never} have no training samples in the calibration data; every class must be represented."
        )
