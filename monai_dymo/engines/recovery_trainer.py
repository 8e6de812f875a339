"""Training and validation of recovery networks (e.g. :class:`~monai_dymo.networks.recovery.MoPoERecovery`) with MONAI
engines.

- :class:`RecoveryTrainer` is a :class:`monai.engines.SupervisedTrainer` whose iteration minimises the network's
  ``elbo(inputs, present)``; ``engine.state.output`` holds ``loss``, ``recon``, ``kl`` and ``recon_<modality>``.
  By default the losses are logged with :class:`monai.handlers.StatsHandler` and
  :class:`monai.handlers.TensorBoardStatsHandler`, and a validator is run with
  :class:`monai.handlers.ValidationHandler`.
- :class:`RecoveryEvaluator` is a :class:`monai.engines.SupervisedEvaluator` that hides a random part of the observed
  modalities of every validation patient (``simulate_missing``), recovers them and scores the recoveries with
  :class:`RecoveryMSE` (mean squared error of recovered vs. true held-out modalities; lower is better).

Batches are MONAI-style dicts: one key per modality (``Tensor[B, ...]``) and ``present`` (``BoolTensor[B, M]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler, TensorBoardStatsHandler, ValidationHandler
from monai.utils import IgniteInfo, min_version, optional_import
from monai.utils.enums import CommonKeys
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from monai_dymo.distributed import is_distributed, unwrap
from monai_dymo.engines.batches import PrepareRecoveryBatch
from monai_dymo.engines.gradient_step import gradient_step
from monai_dymo.handlers.progress import attach_progress_bar, loss_progress
from monai_dymo.keys import DyMoKeys

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
    from ignite.metrics import Metric
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
    Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")
reinit__is_reduced, _ = optional_import(
    "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "reinit__is_reduced"
)
sync_all_reduce, _ = optional_import(
    "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "sync_all_reduce"
)

__all__ = [
    "PrepareRecoveryBatch",
    "RecoveryTrainer",
    "RecoveryEvaluator",
    "RecoveryMSE",
    "simulate_missing",
    "recovery_loss_terms",
    "lower_is_better",
    "default_recovery_train_handlers",
    "default_recovery_val_handlers",
    "KEPT",
    "MODALITIES",
]

#: key of ``engine.state.output`` holding the modalities the evaluator left visible (``BoolTensor[B, M]``).
KEPT = "kept"
#: key of the evaluator's ``engine.state.output`` with the modality order of ``present`` / ``kept``.
MODALITIES = "modalities"
_LOSS_TERMS = ("loss", "recon", "kl")


def recovery_loss_terms(output: Mapping[str, Any]) -> dict[str, Any]:
    """``output_transform`` for logging handlers: the scalar loss terms ``loss``, ``recon``, ``kl``."""
    return {k: output[k] for k in _LOSS_TERMS if k in output}


def lower_is_better(current: float, previous: float) -> bool:
    """``metric_cmp_fn`` for error metrics."""
    return current < previous


def simulate_missing(present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide part of each patient's observed modalities.

    For every patient with ``|O| >= 2`` observed modalities, keep a subset drawn uniformly from the non-empty *proper*
    subsets of ``O`` (so at least one modality is held out and one is kept); patients with one observed modality
    keep it.

    Args:
        present: ``BoolTensor[B, M]``.
        generator: optional CPU RNG.

    Returns:
        ``kept``: ``BoolTensor[B, M]``, ``kept <= present``, on ``present``'s device.
    """
    pres = present.detach().to("cpu", torch.bool)
    multi = pres.sum(1) >= 2
    kept = pres.clone()
    todo = multi.clone()
    while bool(todo.any()):
        idx = torch.nonzero(todo, as_tuple=False).flatten()
        draw = (torch.rand(idx.numel(), pres.shape[1], generator=generator) < 0.5) & pres[idx]
        n = draw.sum(1)
        ok = (n >= 1) & (n < pres[idx].sum(1))
        kept[idx[ok]] = draw[ok]
        todo[idx[ok]] = False
    return kept.to(present.device)


class RecoveryMSE(Metric):
    """Mean squared error of recovered vs. true values over held-out (patient, modality) pairs.

    Reads ``engine.state.output`` of :class:`RecoveryEvaluator`: ``pred`` (recovered dict), ``label`` (true dict),
    ``present`` and ``kept``. Each held-out pair contributes the mean of its squared errors (NaN targets, i.e. missing
    clinical fields, are skipped); the metric is the average over pairs (NaN when nothing was held out).

    Args:
        modality: restrict to one modality; None = all.
        output_transform: ignite output transform.
    """

    required_output_keys = (CommonKeys.PRED, CommonKeys.LABEL, DyMoKeys.PRESENT, KEPT, MODALITIES)

    def __init__(
        self,
        modality: str | None = None,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.modality = modality
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    @reinit__is_reduced
    def update(self, output: Mapping[str, Any] | Sequence[Any]) -> None:
        if not isinstance(output, Mapping):  # ignite hands over the values of `required_output_keys` as a tuple
            output = dict(zip(self.required_output_keys, output))
        pred, label = output[CommonKeys.PRED], output[CommonKeys.LABEL]
        heldout = output[DyMoKeys.PRESENT].bool() & ~output[KEPT].bool()
        order = {name: i for i, name in enumerate(output.get(MODALITIES, pred))}
        names = list(order) if self.modality is None else [self.modality]
        for name in names:
            if name not in label:
                continue
            rows = torch.nonzero(heldout[:, order[name]], as_tuple=False).flatten()
            if rows.numel() == 0:
                continue
            p = pred[name][rows.to(pred[name].device)].detach().float().flatten(1)
            t = label[name][rows.to(label[name].device)].detach().float().flatten(1).to(p.device)
            valid = ~torch.isnan(t)
            sq = torch.where(valid, (p - torch.nan_to_num(t)) ** 2, torch.zeros_like(p))
            n = valid.sum(1)
            per_row = sq.sum(1) / n.clamp_min(1)
            self._sum += float(per_row[n > 0].sum())
            self._count += int((n > 0).sum())

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        return self._sum / self._count if self._count else float("nan")


def default_recovery_train_handlers(
    log_dir: str | None = "runs/recovery",
    validator: Any | None = None,
    val_interval: int = 1,
    name: str = "RecoveryTrainer",
) -> list:
    """Stats + TensorBoard logging of ``loss``/``recon``/``kl`` per iteration (+ validation every ``val_interval``
    epochs when a validator is given)."""
    handlers: list = [StatsHandler(name=name, tag_name="loss", output_transform=recovery_loss_terms)]
    if log_dir is not None:
        handlers.append(TensorBoardStatsHandler(log_dir=log_dir, output_transform=recovery_loss_terms))
    if validator is not None:
        handlers.append(ValidationHandler(interval=val_interval, validator=validator, epoch_level=True))
    return handlers


def default_recovery_val_handlers(log_dir: str | None = "runs/recovery", name: str = "RecoveryEvaluator") -> list:
    """Epoch-level Stats + TensorBoard logging of the evaluator's metrics (``recovery_mse``, ...)."""
    handlers: list = [StatsHandler(name=name, iteration_log=False, output_transform=lambda x: None)]
    if log_dir is not None:
        handlers.append(TensorBoardStatsHandler(log_dir=log_dir, iteration_log=False, output_transform=lambda x: None))
    return handlers


class RecoveryTrainer(SupervisedTrainer):
    """Train a recovery network by minimising its ``elbo(inputs, present)`` (the MoPoE generalised ELBO).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, non_blocking, amp, amp_kwargs,
            optim_set_to_none, accumulation_steps, key_train_metric, additional_metrics, metric_cmp_fn, event_names,
            event_to_attr, to_kwargs: as :class:`monai.engines.SupervisedTrainer`.
        loss_function: None (default) calls ``network.elbo(inputs, present, generator=...)``; otherwise a callable
            ``(network, inputs, present) -> dict`` with at least a scalar ``"loss"``.
        prepare_batch: default :class:`PrepareRecoveryBatch` over ``network.modalities`` and ``present_key``.
        present_key: batch key of the observed mask.
        train_handlers: None -> :func:`default_recovery_train_handlers` (StatsHandler, TensorBoardStatsHandler in
            ``log_dir``, ValidationHandler when ``validator`` is given). An explicit list is used as given (a
            ValidationHandler is appended when ``validator`` is given and the list has none).
        log_dir: TensorBoard directory of the default handlers (None: no TensorBoard).
        validator: e.g. a :class:`RecoveryEvaluator`, run every ``val_interval`` epochs.
        seed: seeds the RNG of the subset draws and the reparameterisation noise (None: global RNG); in distributed
            runs rank ``r`` uses ``seed + r``.
        progress: show a progress bar with the loss (ignite's ``ProgressBar``); None: when standard error is a
            terminal (see :mod:`monai_dymo.handlers.progress`).

    Distributed training (``torchrun``): pass the network wrapped in ``DistributedDataParallel`` (attributes are read
    through ``.module``) and a loader with a ``DistributedSampler``; the default loss runs through the wrapper's
    forward (``network(inputs, present, elbo=True, generator=...)``), so gradients are averaged over the ranks. A custom
    ``loss_function`` must call ``network(...)`` itself for the same effect.

    ``engine.state.output`` after each iteration: ``loss`` (detached), ``recon``, ``kl``, ``recon_<m>`` scalars,
    plus ``image`` (the inputs dict) and ``present``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        present_key: str = DyMoKeys.PRESENT,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = lower_is_better,
        train_handlers: Sequence | None = None,
        log_dir: str | None = "runs/recovery",
        validator: Any | None = None,
        val_interval: int = 1,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        accumulation_steps: int = 1,
        seed: int | None = None,
        progress: bool | None = None,
    ) -> None:
        net = unwrap(network)  # attribute access only: training calls `network` itself (DDP synchronisation)
        if not hasattr(net, "modalities"):
            raise ValueError("the recovery network must expose `modalities`.")
        if loss_function is None and not callable(getattr(net, "elbo", None)):
            raise ValueError("the network has no `elbo(inputs, present)` method; pass a `loss_function`.")
        if prepare_batch is None:
            prepare_batch = PrepareRecoveryBatch(net.modalities, present_key)
        if train_handlers is None:
            handlers = default_recovery_train_handlers(log_dir, validator, val_interval)
        else:
            handlers = list(train_handlers)
            if validator is not None and not any(isinstance(h, ValidationHandler) for h in handlers):
                handlers.append(ValidationHandler(interval=val_interval, validator=validator, epoch_level=True))
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,  # type: ignore[arg-type]
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=False,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
            accumulation_steps=accumulation_steps,
        )
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.progress_bar = attach_progress_bar(self, progress, "Recovery training", loss_progress)

    def _rng(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None:
            # distributed runs: one stream per rank (ranks hold different samples; equal draws would correlate them)
            rank = torch.distributed.get_rank() if is_distributed() else 0
            self._generator = torch.Generator(device=self.state.device)
            self._generator.manual_seed(int(self.seed) + rank)
        return self._generator

    def _iteration(self, engine: RecoveryTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        """One optimisation step on the ELBO of a batch (conventions of ``SupervisedTrainer._iteration``)."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, present = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.state.output = {CommonKeys.IMAGE: inputs, DyMoKeys.PRESENT: present}

        def _compute_loss() -> bool:
            if engine.loss_function is None:  # through forward: a DDP wrapper synchronises the gradients
                terms = engine.network(inputs, present, elbo=True, generator=engine._rng())
            else:
                terms = engine.loss_function(engine.network, inputs, present)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            if not isinstance(terms, Mapping) or "loss" not in terms:
                raise ValueError("the recovery loss must return a dict with a scalar 'loss'.")
            engine.state.output.update({k: (v.detach() if k != "loss" else v) for k, v in terms.items()})
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return True

        gradient_step(engine, _compute_loss)
        engine.state.output[CommonKeys.LOSS] = engine.state.output[CommonKeys.LOSS].detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class RecoveryEvaluator(SupervisedEvaluator):
    """Score a recovery network on validation data with simulated missingness.

    Each iteration hides part of every patient's observed modalities (:func:`simulate_missing`, seeded so that every
    run hides the same ones for the same data order, unless the batch carries its own ``kept_key`` mask), replaces the
    hidden ones by zero placeholders, recovers them and stores ``pred`` (recovered dict), ``label`` (true inputs),
    ``present`` and ``kept`` in ``engine.state.output``.

    Args:
        device, val_data_loader, network, epoch_length, non_blocking, amp, amp_kwargs, event_names, event_to_attr,
            to_kwargs: as :class:`monai.engines.SupervisedEvaluator`.
        prepare_batch, present_key: as :class:`RecoveryTrainer`.
        key_val_metric: default ``{"recovery_mse": RecoveryMSE()}``.
        additional_metrics: default one ``RecoveryMSE(modality=m)`` per modality, named ``recovery_mse_<m>``.
        metric_cmp_fn: default :func:`lower_is_better`.
        val_handlers: None -> :func:`default_recovery_val_handlers` (``log_dir``).
        seed: seed of the simulated missingness, reset at every run.
        kept_key: optional batch key with a precomputed ``kept`` mask.
        progress: show a progress bar; None: when standard error is a terminal.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        present_key: str = DyMoKeys.PRESENT,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = lower_is_better,
        val_handlers: Sequence | None = None,
        log_dir: str | None = "runs/recovery",
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        seed: int = 0,
        kept_key: str = KEPT,
        progress: bool | None = None,
    ) -> None:
        net = unwrap(network)
        if not hasattr(net, "modalities"):
            raise ValueError("the recovery network must expose `modalities`.")
        if prepare_batch is None:
            prepare_batch = PrepareRecoveryBatch(net.modalities, present_key)
        if key_val_metric is None:
            key_val_metric = {"recovery_mse": RecoveryMSE()}
            if additional_metrics is None:
                additional_metrics = {f"recovery_mse_{m}": RecoveryMSE(modality=m) for m in net.modalities}
        super().__init__(
            device=torch.device(device) if isinstance(device, str) else device,
            val_data_loader=val_data_loader,
            network=network,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=default_recovery_val_handlers(log_dir) if val_handlers is None else val_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=False,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.seed = int(seed)
        self.kept_key = kept_key
        self._generator = torch.Generator()
        self.add_event_handler(Events.STARTED, self._reset_rng)
        self.progress_bar = attach_progress_bar(self, progress, "Recovery validation")

    def _reset_rng(self, engine: Engine) -> None:
        self._generator.manual_seed(self.seed)

    def _iteration(self, engine: RecoveryEvaluator, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, present = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        present = present.bool()
        if engine.kept_key in batchdata:
            kept = torch.as_tensor(batchdata[engine.kept_key]).bool().to(present.device) & present
        else:
            kept = simulate_missing(present, engine._generator)
        masked: dict[str, torch.Tensor] = {}
        modalities = tuple(unwrap(engine.network).modalities)
        for m, name in enumerate(modalities):
            if name in inputs:
                x = inputs[name]
                keep = kept[:, m].to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
                masked[name] = torch.where(keep, x, torch.zeros_like(x))
        with engine.mode(engine.network):
            if engine.amp:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    recovered = engine.network(masked, kept)
            else:
                recovered = engine.network(masked, kept)
        engine.state.output = {
            CommonKeys.PRED: recovered,
            CommonKeys.LABEL: inputs,
            DyMoKeys.PRESENT: present,
            KEPT: kept,
            MODALITIES: modalities,
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
