"""Subset-augmented training of the DyMo fusion network with MONAI engines (method section 2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.transforms import Transform
from monai.utils import IgniteInfo, convert_to_tensor, min_version, optional_import
from monai.utils.enums import CommonKeys as Keys

from monai_dymo.distributed import is_distributed, unwrap
from monai_dymo.engines.batches import PrepareDyMoBatch, unpack_batch
from monai_dymo.engines.gradient_step import gradient_step
from monai_dymo.handlers.progress import attach_progress_bar, loss_progress
from monai_dymo.handlers.prototypes import PrototypeRefreshHandler
from monai_dymo.keys import DyMoKeys
from monai_dymo.losses import PrototypeAccumulator, SubsetAugmentedLoss, _group_mean
from monai_dymo.subsets import all_subset_masks, sample_subsets

if TYPE_CHECKING:
    from ignite.engine import Engine, EventEnum
    from ignite.metrics import Metric
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")
    EventEnum, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "EventEnum")

__all__ = ["PrepareDyMoBatch", "subset_augmented_forward", "SubsetAugmentedTrainer", "AllSubsetsEvaluator"]


def subset_augmented_forward(
    network: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    subsets: torch.Tensor,
    present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Encode the batch once, then fuse every (subset, sample) row in one batched call, through ``network.forward``
    (``network(inputs, subsets=subsets, present=present)``), so that a ``DistributedDataParallel`` wrapper
    synchronises the gradients.

    Row ``(k, b)`` uses subset ``subsets[k]``, restricted to ``present[b]`` when ``present`` is given; rows whose
    restricted subset is empty are skipped. Gradients equal those of re-encoding the batch for every subset.

    Args:
        network: a :class:`monai_dymo.networks.fusion.DynamicFusionTransformer`, possibly wrapped in
            ``DistributedDataParallel``.
        inputs: ``{name: [B, ...]}``.
        subsets: BoolTensor ``[K, M]``.
        present: optional BoolTensor ``[B, M]`` of observed modalities.

    Returns:
        ``{"logits": [N, C], "z": [N, D], "rows": [N] sample index, "groups": [N] subset index k,
        "subset": [N, M] the subset each row was fused with}``, rows ordered subset-major (see
        :meth:`~monai_dymo.networks.fusion.DynamicFusionTransformer.fuse_subsets`).
    """
    num_mod = len(unwrap(network).modalities)
    if subsets.dtype != torch.bool or subsets.ndim != 2 or subsets.shape[1] != num_mod:
        raise ValueError(f"subsets must be a bool tensor [K, {num_mod}], found {subsets.dtype} {tuple(subsets.shape)}.")
    return network(inputs, subsets=subsets, present=present)


class SubsetAugmentedTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` for DyMo's robust representation learning.

    Per iteration: sample ``num_subsets`` distinct non-empty modality subsets uniformly (``sample_subsets`` with this
    trainer's seeded ``torch.Generator``), encode the batch once, fuse every (subset, sample) row, and minimise
    :class:`SubsetAugmentedLoss` (cross-entropy + ``λ`` · prototype loss once active, averaged within each subset and
    then over subsets). The detached projections of all rows go into ``prototype_accumulator``; a
    :class:`PrototypeRefreshHandler` turns them into the next epoch's prototypes (one is attached automatically, first,
    when ``prototype_warmup_epochs`` is not None and ``train_handlers`` holds none).

    Batches are dicts: one key per modality name (``network.modalities``), ``label`` and optionally ``present``
    (``[B, M]`` bool). With ``present``, each sampled subset is restricted to each patient's present modalities, and a
    patient whose restricted subset is empty is skipped for that subset (a batch with no row left does no update).

    ``engine.state.output``: ``pred`` logits ``[N, C]`` and ``label`` ``[N]`` for the N (subset, sample) rows, ``loss``,
    ``ce_loss``, ``prototype_loss`` (scalars), ``subsets`` ``[K, M]``, ``rows`` and ``groups`` ``[N]`` (sample / subset
    index of each row). These are not per-patient, so ``decollate`` defaults to False: give ``StatsHandler``
    ``output_transform=monai.handlers.from_engine(["loss"])`` and metrics ``from_engine(["pred", "label"])``.

    Distributed training (``torchrun``): pass the network wrapped in ``DistributedDataParallel`` with
    ``find_unused_parameters=True`` (the projection head is unused during the warm-up; e.g.
    :func:`monai_dymo.distributed.wrap_ddp`) and a loader with a ``DistributedSampler``. The forward pass goes through
    the wrapper (``network(inputs, subsets=..., present=...)``), so gradients are averaged over the ranks; with the same
    ``seed`` every rank samples the same subsets, so a step on ``R`` ranks of ``B`` samples each equals a step on the
    global batch of ``R * B`` samples (exactly when every rank has the same number of rows per subset, e.g. without
    ``present``, and without batch norm, whose statistics are per rank unless converted to ``SyncBatchNorm``). A rank
    left without rows still runs backward (zero gradients) and steps, as the reduction is collective. The
    :class:`PrototypeRefreshHandler` sums the accumulated projections over the ranks, so prototypes agree.

    Args (beyond :class:`monai.engines.SupervisedTrainer`, whose other arguments keep their meaning):
        network: a :class:`monai_dymo.networks.fusion.DynamicFusionTransformer`, or one wrapped in
            ``DistributedDataParallel`` (unwrapped through ``.module`` for attribute access only).
        loss_function: a :class:`SubsetAugmentedLoss`; default built from the network with ``prototype_weight``,
            ``temperature``, ``label_smoothing`` (the smoothing of the classifier's cross-entropy, also of the
            per-modality auxiliary loss; 0: none) and ``class_weights``.
        class_weights: per-class weights ``[C]`` of every cross-entropy (each sampled subset, the per-modality
            auxiliary loss and the prototype term), e.g. :func:`monai_dymo.losses.class_weights` of the training
            split's class counts; None: every row weighs 1. Give it here or to ``loss_function``, not both.
        num_subsets: ``K`` subsets per batch (5 in DyMo's PolyMNIST setting; at most ``2**M - 1``).
        seed: seed of the subset sampler (None: random).
        prototype_warmup_epochs: warm-up of the automatically attached refresh handler (None: attach none).
        accumulator: the :class:`PrototypeAccumulator` (default: a new one).
        label_key, present_key: batch keys used by the default ``prepare_batch``.
        progress: show a progress bar with the loss (ignite's ``ProgressBar``); None: when standard error is a
            terminal (see :mod:`monai_dymo.handlers.progress`).
        unimodal_weight: weight of the per-modality auxiliary loss (0: off, docs/method.md's training). When
            positive, every iteration also fuses each patient's every observed modality ALONE (the ``M`` singleton
            subsets, in the same batched forward) and adds ``unimodal_weight`` times their cross-entropy, averaged
            within each modality and then over modalities: the unimodal losses of the modality-imbalance literature,
            in the shared-head form, so that no encoder can leave the work to an easier modality. These rows do not
            enter the prototype loss nor the prototypes (they are in the output's ``pred`` / ``label``, so a training
            metric counts them too); ``engine.state.output["unimodal_loss"]`` logs the term.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: SubsetAugmentedLoss | None = None,
        num_subsets: int = 5,
        seed: int | None = 0,
        prototype_warmup_epochs: int | None = 3,
        prototype_weight: float = 1.0,
        temperature: float = 0.1,
        accumulator: PrototypeAccumulator | None = None,
        label_key: str = DyMoKeys.LABEL,
        present_key: str | None = DyMoKeys.PRESENT,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        accumulation_steps: int = 1,
        progress: bool | None = None,
        unimodal_weight: float = 0.0,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        if unimodal_weight < 0:
            raise ValueError(f"unimodal_weight must be >= 0, got {unimodal_weight}.")
        self.unimodal_weight = float(unimodal_weight)
        net = unwrap(network)  # attribute access only: training calls `network` itself (DDP synchronisation)
        for attr in ("encode", "fuse_subsets", "modalities", "num_classes", "proj_dim"):
            if not hasattr(net, attr):
                raise ValueError(f"network must be a DynamicFusionTransformer-like module; it has no '{attr}'.")
        if isinstance(network, torch.nn.parallel.DistributedDataParallel) and not network.find_unused_parameters:
            raise ValueError(
                "wrap the network in DistributedDataParallel with find_unused_parameters=True: its projection head "
                "gets no gradient while the prototype loss is off (the warm-up epochs)."
            )
        num_mod = len(net.modalities)
        if not 1 <= num_subsets <= 2**num_mod - 1:
            raise ValueError(
                f"num_subsets must be in [1, {2**num_mod - 1}] for {num_mod} modalities, got {num_subsets}."
            )
        metric = getattr(net, "metric", "cosine")
        if loss_function is None:
            loss_function = SubsetAugmentedLoss(
                net.num_classes,
                net.proj_dim,
                prototype_weight=prototype_weight,
                temperature=temperature,
                metric=metric,
                label_smoothing=label_smoothing,
                class_weights=class_weights,
            )
        elif class_weights is not None:
            raise ValueError("give class_weights to the loss_function (SubsetAugmentedLoss), not to the trainer too.")
        if not isinstance(loss_function, SubsetAugmentedLoss):
            raise ValueError(f"loss_function must be a SubsetAugmentedLoss, found {type(loss_function).__name__}.")
        if loss_function.metric != metric:
            raise ValueError(f"loss_function uses the {loss_function.metric} metric, the network {metric}.")
        if (loss_function.num_classes, loss_function.proj_dim) != (net.num_classes, net.proj_dim):
            raise ValueError(
                f"loss_function is for {loss_function.num_classes} classes / proj_dim {loss_function.proj_dim}, the "
                f"network has {net.num_classes} / {net.proj_dim}."
            )
        handlers = list(train_handlers) if train_handlers is not None else []
        if prototype_warmup_epochs is not None and not any(isinstance(h, PrototypeRefreshHandler) for h in handlers):
            handlers.insert(0, PrototypeRefreshHandler(warmup_epochs=prototype_warmup_epochs))
        if prepare_batch is None:
            prepare_batch = PrepareDyMoBatch(net.modalities, label_key=label_key, present_key=present_key)
        # set before the handlers are attached by the parent constructor
        self.prototype_accumulator = (
            accumulator if accumulator is not None else PrototypeAccumulator(net.num_classes, net.proj_dim)
        )
        self.num_subsets = int(num_subsets)
        self.subset_generator = torch.Generator()
        if seed is None:
            self.subset_generator.seed()
        else:
            self.subset_generator.manual_seed(int(seed))
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function.to(device),
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
            accumulation_steps=accumulation_steps,
        )
        self.progress_bar = attach_progress_bar(self, progress, "DyMo fusion training", loss_progress)

    def _iteration(self, engine: SubsetAugmentedTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        """One iteration: sample K subsets, encode once, fuse all (subset, sample) rows, loss, backward, step."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, _, kwargs = unpack_batch(batch)
        present = kwargs.get("present")
        targets = convert_to_tensor(targets, track_meta=False, wrap_sequence=True)
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.ndim != 1:
            raise ValueError(f"labels must be class indices [B] (or [B, 1]), found shape {tuple(targets.shape)}.")
        num_mod = len(unwrap(engine.network).modalities)
        subsets = sample_subsets(engine.num_subsets, num_mod, engine.subset_generator).to(targets.device)
        engine.state.output = {"subsets": subsets}
        num_sampled = subsets.shape[0]
        if engine.unimodal_weight > 0:  # the M singleton subsets ride along in the same forward
            subsets = torch.cat([subsets, torch.eye(num_mod, dtype=torch.bool, device=subsets.device)])

        def _compute_pred_loss() -> bool:
            out = subset_augmented_forward(engine.network, inputs, subsets, present)
            labels = targets.to(out["rows"].device)[out["rows"]]
            engine.state.output.update(
                {Keys.PRED: out["logits"], Keys.LABEL: labels, "rows": out["rows"], "groups": out["groups"]}
            )
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            if out["logits"] is None:  # every sampled subset missed every patient's present modalities
                zero = torch.zeros((), device=labels.device)
                engine.state.output.update({Keys.LOSS: zero, "ce_loss": zero, "prototype_loss": zero})
                if synced:  # this rank still takes part in the gradient reduction, with zero gradients
                    engine.state.output[Keys.LOSS] = out["anchor"]
                engine.fire_event(IterationEvents.LOSS_COMPLETED)
                return False
            main = out["groups"] < num_sampled
            if bool(main.all()):
                terms = engine.loss_function.compute(out["logits"], out["z"], labels, out["groups"])
                uni = torch.zeros_like(terms["loss"])
            else:
                uni_rows = ~main
                ce = engine.loss_function.classifier_loss(out["logits"][uni_rows], labels[uni_rows].long())
                uni = _group_mean(ce, out["groups"][uni_rows])  # within each modality alone, then over them
                if bool(main.any()):
                    terms = engine.loss_function.compute(
                        out["logits"][main], out["z"][main], labels[main], out["groups"][main]
                    )
                else:  # every sampled subset missed every patient: only the unimodal rows are left
                    zero = uni * 0.0
                    terms = {"loss": zero, "ce_loss": zero, "prototype_loss": zero}
                terms["loss"] = terms["loss"] + engine.unimodal_weight * uni
            engine.state.output.update(
                {Keys.LOSS: terms["loss"], "ce_loss": terms["ce_loss"], "prototype_loss": terms["prototype_loss"],
                 "unimodal_loss": uni}
            )
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine.prototype_accumulator.update(out["z"][main].detach().float(), labels[main])
            return True

        # under DistributedDataParallel every rank must run backward and step (the reduction is collective)
        synced = isinstance(engine.network, torch.nn.parallel.DistributedDataParallel) and is_distributed()
        gradient_step(engine, _compute_pred_loss, always_step=synced)
        for key in (Keys.PRED, Keys.LOSS, "ce_loss", "prototype_loss", "unimodal_loss"):
            if isinstance(engine.state.output.get(key), torch.Tensor):
                engine.state.output[key] = engine.state.output[key].detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class AllSubsetsEvaluator(SupervisedEvaluator):
    """Validation of the fusion network pooled over every non-empty modality subset (docs/method.md §7).

    Per iteration the batch is encoded once and fused with all ``2**M - 1`` subsets (restricted to ``present`` when
    the batch has it); ``engine.state.output`` holds ``pred`` logits ``[N, C]`` and ``label`` ``[N]`` for the ``N``
    (subset, sample) rows, so a metric such as ``ignite.metrics.Accuracy`` with
    ``output_transform=monai.handlers.from_engine(["pred", "label"])`` gives the accuracy pooled over subsets, the
    early-stopping / best-checkpoint criterion of the reference's recipe, and
    :class:`~monai_dymo.engines.BalancedAccuracy` the balanced accuracy pooled the same way (every class counts the
    same, so a rare class never predicted costs the epoch; the cohort bundle's default). Use either with MONAI's
    ``ValidationHandler``, ``CheckpointSaver(save_key_metric=True)`` and ``EarlyStopHandler``. Outputs are not
    per-patient, so ``decollate`` is False. Other arguments as in :class:`monai.engines.SupervisedEvaluator`.

    ``scores``: which logits the rows carry: ``"transformer"`` (default; the transformer's own, those training's
    cross-entropy fits) or ``"decision"``: the network's ``fuse`` (its decision; with ``logit_fusion="product"`` the
    product of the row's single-modality experts), so that the kept epoch is the best for how the network decides.
    For ``logit_fusion="transformer"`` the two are equal.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        label_key: str = DyMoKeys.LABEL,
        present_key: str | None = DyMoKeys.PRESENT,
        prepare_batch: Callable | None = None,
        scores: str = "transformer",
        **kwargs: Any,
    ) -> None:
        if scores not in ("transformer", "decision"):
            raise ValueError(f"scores must be 'transformer' or 'decision', got {scores!r}.")
        self.scores = scores
        for attr in ("encode", "fuse", "modalities"):
            if not hasattr(network, attr):
                raise ValueError(f"network must be a DynamicFusionTransformer-like module; it has no '{attr}'.")
        if prepare_batch is None:
            prepare_batch = PrepareDyMoBatch(network.modalities, label_key=label_key, present_key=present_key)
        kwargs.setdefault("decollate", False)
        super().__init__(
            device=device, val_data_loader=val_data_loader, network=network, prepare_batch=prepare_batch, **kwargs
        )
        self.subsets = all_subset_masks(len(network.modalities))  # [2^M - 1, M]

    def _iteration(self, engine: AllSubsetsEvaluator, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets, _, kwargs = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        targets = convert_to_tensor(targets, track_meta=False, wrap_sequence=True).reshape(-1)
        with engine.mode(engine.network):
            if engine.scores == "decision":  # encoded once; every row scored by the network's own decision
                network = unwrap(engine.network)
                tokens = network.encode(inputs)
                out = network.fuse_subsets(tokens, engine.subsets, kwargs.get("present"))
                logits = None if out["logits"] is None else network.fuse(tokens, out["subset"], index=out["rows"])[0]
            else:
                out = subset_augmented_forward(engine.network, inputs, engine.subsets, kwargs.get("present"))
                logits = out["logits"]
        engine.state.output = {Keys.PRED: logits, Keys.LABEL: targets.to(out["rows"].device)[out["rows"]]}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
