"""One factory for every image token encoder: this project's small CNN or one of MONAI's backbones.

:func:`build_token_encoder` is what every network builder calls (``build_fusion``):
the backbone is chosen by name in a config, in 2D or 3D, and its **last feature map** becomes the tokens (a 1x1
convolution to the token width, then an adaptive max- or average-pool to a fixed grid, so the number of tokens does
not depend on the image size).

Backbones (:data:`BACKBONES`):

- ``"small"``: :class:`~monai_dymo.networks.encoders.ImageTokenEncoder` (stride-2 convolutions, ``channels``);
- ``"none"``: no convolution; the one token is the intensity histogram (needs ``histogram_bins``;
  :class:`~monai_dymo.networks.histogram.HistogramTokenEncoder` without an inner encoder);
- ``"resnet10"`` ... ``"resnet200"``: :class:`monai.networks.nets.ResNet`; in 3D with MedicalNet's layout (its
  shortcut type and biases, so a MedicalNet checkpoint loads), in 2D with torchvision's layout (so an ImageNet
  ``resnet18`` / ``resnet50`` state dict loads);
- ``"densenet121"``, ``"densenet169"``, ``"densenet201"``, ``"densenet264"``: :class:`monai.networks.nets.DenseNet`
  features;
- ``"efficientnet-b0"`` ... ``"efficientnet-b7"``: :class:`monai.networks.nets.EfficientNetBNFeatures`.

Nothing is downloaded: ``pretrained`` is a path to weights the site already has (:func:`load_pretrained_backbone`:
``module.`` / ``backbone.`` prefixes and classifier heads are ignored, a 3-channel first convolution is summed over its
channels for a 1-channel modality; a file that does not fit stops with one line naming the file and the parameter).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act

from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError
from monai_dymo.networks.encoders import ImageTokenEncoder, token_pool
from monai_dymo.networks.histogram import HistogramTokenEncoder
from monai_dymo.networks.mirror import MirrorInputEncoder

__all__ = [
    "BACKBONES",
    "BackboneTokenEncoder",
    "build_token_encoder",
    "encoder_backbone",
    "has_convolutional_backbone",
    "load_pretrained_backbone",
]

_RESNETS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")
_DENSENETS = ("densenet121", "densenet169", "densenet201", "densenet264")
_EFFICIENTNETS = tuple(f"efficientnet-b{i}" for i in range(8))
#: backbone names understood by :func:`build_token_encoder`
BACKBONES: tuple[str, ...] = ("small", "none", *_RESNETS, *_DENSENETS, *_EFFICIENTNETS)


class _ResNetFeatureMap(nn.Module):
    """A MONAI ResNet up to ``layer4``: ``[B, C_in, *S]`` -> last feature map ``[B, C, *S / 32]``."""

    def __init__(self, name: str, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        from monai.networks.nets.resnet import ResNet, get_inplanes, resnet_params

        block, layers, shortcut, bias_downsample, _ = resnet_params[name]
        if spatial_dims == 2:  # torchvision's layout: projection shortcuts without bias
            shortcut, bias_downsample = "B", False
        self.net = ResNet(
            block=block,
            layers=layers,
            block_inplanes=get_inplanes(),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type=shortcut,
            feed_forward=False,
            bias_downsample=bias_downsample,
        )
        self.out_channels = get_inplanes()[-1] * (4 if block == "bottleneck" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


class _DenseNetFeatureMap(nn.Module):
    """MONAI DenseNet ``features`` (ending with its last norm) and a ReLU."""

    def __init__(self, name: str, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        from monai.networks import nets

        cls = {"densenet121": nets.DenseNet121, "densenet169": nets.DenseNet169, "densenet201": nets.DenseNet201,
               "densenet264": nets.DenseNet264}[name]
        full = cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, pretrained=False)
        self.features = full.features
        self.act = Act[Act.RELU](inplace=False)
        self.out_channels = int(full.class_layers.out.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.features(x))


class _EfficientNetFeatureMap(nn.Module):
    """MONAI ``EfficientNetBNFeatures``: the deepest of its feature maps."""

    def __init__(self, name: str, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        from monai.networks.nets import EfficientNetBNFeatures

        self.net = EfficientNetBNFeatures(name, pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels)
        probe = torch.zeros(1, in_channels, *([64] * spatial_dims))
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            self.out_channels = int(self.net(probe)[-1].shape[1])
        self.net.train(was_training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


class BackboneTokenEncoder(nn.Module):
    """A MONAI backbone's last feature map as tokens: ``[B, C_in, *S]`` -> ``[B, prod(pool_size), dim]``.

    The feature map goes through a 1x1 convolution to ``dim`` channels and an adaptive ``pool_mode`` pool to the
    ``pool_size`` grid (max-pooling by default: a small lesion anywhere in a region reaches its token).

    Args:
        backbone: a name of :data:`BACKBONES` other than ``"small"``.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        dim: token width.
        pool_size: token grid (int or one value per spatial dim).
        pool_mode: ``"max"`` or ``"avg"``; ``"shells"``: the average over ``pool_size`` (an int) concentric shells
            about the centre (:class:`~monai_dymo.networks.shell_pool.RadialShellPool`).
    """

    def __init__(
        self,
        backbone: str,
        spatial_dims: int,
        in_channels: int,
        dim: int,
        pool_size: Sequence[int] | int = 2,
        pool_mode: str = "max",
    ) -> None:
        super().__init__()
        if pool_mode not in ("avg", "max", "shells"):
            raise ValueError(f"pool_mode must be 'avg', 'max' or 'shells', got {pool_mode!r}.")
        if backbone in _RESNETS:
            self.backbone: nn.Module = _ResNetFeatureMap(backbone, spatial_dims, in_channels)
        elif backbone in _DENSENETS:
            self.backbone = _DenseNetFeatureMap(backbone, spatial_dims, in_channels)
        elif backbone in _EFFICIENTNETS:
            self.backbone = _EfficientNetFeatureMap(backbone, spatial_dims, in_channels)
        else:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
        self.backbone_name = backbone
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.dim = dim
        self.to_tokens = Convolution(spatial_dims, int(self.backbone.out_channels), dim, kernel_size=1, conv_only=True)
        self.pool, self.pool_size = token_pool(pool_mode, pool_size, spatial_dims)
        self.num_tokens: int | None = math.prod(self.pool_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, *spatial]`` -> tokens ``[B, n_tokens, dim]``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected an image batch [B, {self.in_channels}, " + ", ".join(["S"] * self.spatial_dims)
                + f"], found shape {tuple(x.shape)}."
            )
        return self.pool(self.to_tokens(self.backbone(x))).flatten(2).transpose(1, 2)


def build_token_encoder(
    spatial_dims: int,
    in_channels: int,
    dim: int,
    backbone: str = "small",
    pool_size: Sequence[int] | int = 2,
    pool_mode: str = "max",
    pretrained: str | Path | None = None,
    channels: Sequence[int] = (16, 32, 64),
    strides: Sequence[int] | None = None,
    num_res_units: int = 0,
    norm: tuple | str | None = "INSTANCE",
    act: tuple | str | None = "PRELU",
    name: str = "image",
    mirror_axis: int | None = None,
    histogram_bins: int | None = None,
    histogram_shells: int = 1,
) -> nn.Module:
    """The token encoder of one image modality, by backbone name (see the module docstring).

    ``channels``, ``strides``, ``num_res_units``, ``norm`` and ``act`` configure ``"small"`` only; ``pretrained``
    loads a state dict into the encoder's backbone (``name``, the modality, is quoted in errors). ``mirror_axis``
    (e.g. 0 for RAS brain volumes): the backbone reads the image and its left-right asymmetry
    (:class:`~monai_dymo.networks.mirror.MirrorInputEncoder`, twice the input channels). ``histogram_bins``: one
    more token, the log histogram of the image's intensities in that many bins, in each of ``histogram_shells``
    concentric shells (:class:`~monai_dymo.networks.histogram.HistogramTokenEncoder`).
    """
    if backbone == "none":
        if histogram_bins is None or mirror_axis is not None or pretrained is not None:
            raise ValueError(
                f"modality '{name}': backbone 'none' (no convolutional encoder) needs `histogram_bins` (its only "
                "token is the intensity histogram) and takes no `mirror_axis` or `pretrained` weights."
            )
        return HistogramTokenEncoder(None, num_bins=histogram_bins, num_shells=histogram_shells,
                                     in_channels=in_channels, dim=dim, spatial_dims=spatial_dims)
    if histogram_bins is not None:
        inner = build_token_encoder(spatial_dims, in_channels, dim, backbone, pool_size, pool_mode, pretrained,
                                    channels, strides, num_res_units, norm, act, name, mirror_axis)
        return HistogramTokenEncoder(inner, num_bins=histogram_bins, num_shells=histogram_shells)
    if mirror_axis is not None:
        inner = build_token_encoder(spatial_dims, 2 * in_channels, dim, backbone, pool_size, pool_mode, pretrained,
                                    channels, strides, num_res_units, norm, act, name)
        return MirrorInputEncoder(inner, axis=mirror_axis)
    if backbone == "small":
        enc: nn.Module = ImageTokenEncoder(
            spatial_dims,
            in_channels,
            dim,
            channels=tuple(channels),
            strides=tuple(strides) if strides is not None else (2,) * len(channels),
            num_res_units=num_res_units,
            pool_size=pool_size,
            pool_mode=pool_mode,
            norm=norm,
            act=act,
        )
    else:
        enc = BackboneTokenEncoder(backbone, spatial_dims, in_channels, dim, pool_size=pool_size, pool_mode=pool_mode)
    if pretrained is not None:
        load_pretrained_backbone(enc, pretrained, name=name)
    return enc


_PREFIXES = ("module.", "backbone.", "model.", "encoder.", "net.", "features.")
_HEADS = ("fc.", "classifier.", "class_layers.", "_fc.", "head.", "heads.")


def _unwrap(encoder: nn.Module) -> nn.Module:
    """The token encoder inside any histogram / mirror wrappers."""
    while isinstance(encoder, (HistogramTokenEncoder, MirrorInputEncoder)) and encoder.encoder is not None:
        encoder = encoder.encoder
    return encoder


def is_small_encoder(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is the package's small convolutional token encoder (``ImageTokenEncoder``), plain or inside
    histogram / mirror wrappers: the encoders the recovery network's image experts can start
    (``init_encoders_from_recovery``)."""
    return isinstance(_unwrap(encoder), ImageTokenEncoder)


def has_convolutional_backbone(encoder: nn.Module) -> bool:
    """Whether ``encoder`` (histogram / mirror wrappers unwrapped) holds convolution stages that read the image: the
    small CNN or a MONAI backbone; False for a histogram-only encoder (backbone ``none``) or any other module."""
    return isinstance(_unwrap(encoder), (ImageTokenEncoder, BackboneTokenEncoder))


def encoder_backbone(encoder: nn.Module) -> nn.Module:
    """The convolutional part of a token encoder (histogram / mirror wrappers unwrapped): a small encoder's
    ``features``, a MONAI backbone's network; any other module is returned as it is."""
    encoder = _unwrap(encoder)
    if isinstance(encoder, BackboneTokenEncoder):
        inner = encoder.backbone
        for attr in ("net", "features"):  # the MONAI network inside the feature-map wrapper
            if isinstance(getattr(inner, attr, None), nn.Module):
                return getattr(inner, attr)
        return inner
    if isinstance(encoder, ImageTokenEncoder):
        return encoder.features
    return encoder


def load_pretrained_backbone(encoder: nn.Module, path: str | Path, name: str = "image") -> dict[str, Any]:
    """Load pretrained weights into ``encoder``'s backbone; returns ``{"loaded", "skipped", "file"}``.

    Accepts a state dict or a checkpoint holding one under ``state_dict`` / ``model`` / ``net``. Key prefixes
    ``module.``, ``backbone.``, ``model.``, ``encoder.``, ``net.``, ``features.`` are stripped until the keys match;
    classifier heads (``fc.``, ``classifier.``, ...) are ignored. A first convolution with 3 input channels loaded into
    a 1-channel modality is summed over its channels (the usual ImageNet-to-greyscale adaptation).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: one line naming the modality, the file and the first parameter that does not fit or that the file
            lacks (every parameter of the backbone must come from the file), or saying that no parameter matches.
    """
    path = Path(path)
    if not path.is_file():
        raise DyMoFileNotFoundError(f"modality '{name}': pretrained weights not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickled module or an unreadable file
        raise DyMoInputError(f"modality '{name}': cannot read pretrained weights {path}: {err}") from None
    for key in ("state_dict", "model", "net", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DyMoInputError(f"modality '{name}': {path} holds no state dict of tensors.")
    target = encoder_backbone(encoder)
    own = target.state_dict()

    def strip(k: str) -> str:
        changed = True
        while changed and k not in own:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
                    break
        return k

    incoming = {strip(k): v for k, v in obj.items()}
    incoming = {k: v for k, v in incoming.items() if not k.startswith(_HEADS)}
    matched = {k: v for k, v in incoming.items() if k in own}
    if not matched:
        raise DyMoInputError(
            f"modality '{name}': no parameter of {path} matches the {getattr(encoder, 'backbone_name', 'small')} "
            f"backbone (file keys e.g. {list(obj)[:3]}, backbone keys e.g. {list(own)[:3]})."
        )
    for k, v in matched.items():
        want = own[k].shape
        if v.shape != want and v.ndim == len(want) and v.ndim >= 3 and v.shape[1] == 3 and want[1] == 1 and (
            v.shape[0] == want[0] and v.shape[2:] == want[2:]
        ):
            matched[k] = v = v.sum(1, keepdim=True)  # RGB first convolution -> greyscale
        if v.shape != want:
            raise DyMoInputError(
                f"modality '{name}': pretrained weights {path} do not fit: parameter '{k}' has shape "
                f"{tuple(v.shape)} in the file, {tuple(want)} in the {getattr(encoder, 'backbone_name', 'small')} "
                "backbone."
            )
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise DyMoInputError(
            f"modality '{name}': pretrained weights {path} do not fit: the "
            f"{getattr(encoder, 'backbone_name', 'small')} backbone's parameter '{missing[0]}' is not in the file "
            f"({len(missing)} missing; another architecture or depth?)."
        )
    target.load_state_dict({**own, **matched}, strict=True)
    return {"loaded": len(matched), "skipped": missing, "file": str(path)}
