"""One synthetic patient of the brain cohort: a real brain deformed onto the stored grid, a lesion of the patient's
class painted into its four sequences, each sequence re-contrasted, and its clinical values drawn."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai_dymo.data.brain_design import (
    _BASE_SCALE,
    _BLOBS_P,
    _CLINICAL,
    _DEPTH_MM,
    _OEDEMA_FACTOR,
    _RADIUS_MM,
    ATTRIBUTE_TABLES,
    CLASSES,
    DEFAULT_FOV_MM,
    SEQUENCES,
)
from monai_dymo.data.brain_sources import BrainSource

__all__ = ["cohort_affine", "synthesize_patient"]


# ----------------------------------------------------------------------------------------------------------- geometry
def cohort_affine(size: int, fov_mm: float = DEFAULT_FOV_MM) -> np.ndarray:
    """RAS affine ``[4, 4]`` of the stored grid: isotropic ``fov_mm / size`` voxels, brain centre at the origin."""
    s = fov_mm / size
    aff = np.diag([s, s, s, 1.0])
    aff[:3, 3] = -(size - 1) / 2.0 * s
    return aff


def _interp_matrix(ctrl: int, size: int) -> torch.Tensor:
    """``[size, ctrl]`` linear interpolation weights from ``ctrl`` evenly spaced control points (ends aligned)."""
    pos = torch.linspace(0, ctrl - 1, size, dtype=torch.float64)
    return torch.clamp(1 - (pos[:, None] - torch.arange(ctrl, dtype=torch.float64)[None]).abs(), min=0).float()


def _smooth_field(rng: np.random.Generator, channels: int, ctrl: int, size: int, scale: float) -> torch.Tensor:
    """``[channels, size, size, size]`` smooth random field: N(0, scale) on a ``ctrl^3`` grid, trilinear upsampled
    (separably, as three small matrix products)."""
    c = torch.from_numpy(rng.standard_normal((channels, ctrl, ctrl, ctrl)).astype(np.float32) * scale)
    w = _interp_matrix(ctrl, size)
    c = torch.tensordot(c, w, dims=([3], [1]))  # [ch, a, b, k]
    c = torch.tensordot(c, w, dims=([2], [1])).permute(0, 1, 3, 2)  # [ch, a, k, j] -> [ch, a, j, k]
    return torch.tensordot(c, w, dims=([1], [1])).permute(0, 3, 1, 2).contiguous()  # [ch, j, k, i] -> [ch, i, j, k]


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _warp(src: BrainSource, rng: np.random.Generator, size: int, fov_mm: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Resample the source (4 sequences, mask, depth) onto the stored grid through a random affine + elastic map.

    Returns ``[6, size, size, size]`` (sequences, mask, depth) and the transform parameters.
    """
    spacing = fov_mm / size
    flip = bool(rng.random() < 0.5)
    angles = rng.uniform(-8, 8, 3) * np.pi / 180
    scales = rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, 3)
    shift = rng.uniform(-5, 5, 3)
    a = _rotation(angles) @ np.diag(scales)
    if flip:
        a = a @ np.diag([-1.0, 1.0, 1.0])
    disp = _smooth_field(rng, 3, 5, size, 3.0)  # mm
    lin = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0) * spacing
    p = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1)  # [n, n, n, 3] world mm
    a_t = torch.from_numpy(a.astype(np.float32))
    offset = torch.from_numpy((src.center_mm + shift).astype(np.float32))
    q = p @ a_t.T + disp.permute(1, 2, 3, 0) + offset  # source mm (1 mm index units)
    q = (q - (src.voxel_mm - 1) / 2.0) / src.voxel_mm  # source voxel index
    dims = torch.tensor(src.mask.shape, dtype=torch.float32)
    grid = (2 * q / (dims - 1) - 1).flip(-1)[None]  # grid_sample wants (z, y, x) for an input [N, C, X, Y, Z]
    stack = np.concatenate([src.volumes, src.mask[None].astype(np.float32), src.depth[None]], axis=0)
    out = F.grid_sample(torch.from_numpy(stack)[None], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[0]
    params = {"flip_lr": flip, "rotation_deg": np.round(angles * 180 / np.pi, 3).tolist(),
              "scale": np.round(scales, 4).tolist(), "shift_mm": np.round(shift, 3).tolist()}
    return out, params


# ------------------------------------------------------------------------------------------------------------- lesion
def _draw_attributes(label: int, rng: np.random.Generator) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for name, table in ATTRIBUTE_TABLES.items():
        attrs[name] = table["values"][int(rng.choice(3, p=table["p"][label]))]
    attrs["num_blobs"] = int(rng.choice(3, p=_BLOBS_P[label])) + 1
    return attrs


def _draw_clinical(label: int, rng: np.random.Generator) -> dict[str, Any]:
    c = _CLINICAL[label]
    age = int(np.clip(round(rng.normal(*c["age"])), 18, 95))
    sex = "F" if rng.random() < c["female"] else "M"
    kps = int(np.clip(10 * round(rng.normal(*c["kps"]) / 10), 30, 100))
    ldh = int(np.clip(round(rng.normal(*c["ldh"])), 90, 900))
    return {"age": age, "sex": sex, "kps": kps, "ldh": ldh}


def _place_blobs(label: int, attrs: dict[str, Any], mask: torch.Tensor, depth: torch.Tensor, spacing: float,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
    """Blob centres (world mm), radii, core fractions and oedema factors; centres at class-dependent depths."""
    size = mask.shape[0]
    blobs: list[dict[str, Any]] = []
    dlo, dhi = _DEPTH_MM[label]
    inside = mask & (depth > 0)
    for b in range(attrs["num_blobs"]):
        r = float(rng.uniform(*_RADIUS_MM[label])) * (1.0 if b == 0 else 0.75)
        lo, hi = (dlo, dhi) if label != 2 else (dlo + 0.3 * r, dhi + 0.3 * r)
        cand = torch.nonzero(inside & (depth >= lo) & (depth <= hi))
        if cand.shape[0] == 0:
            cand = torch.nonzero(inside & (depth >= depth.max() * 0.5))
        for _ in range(20):  # keep blobs apart
            idx = cand[int(rng.integers(cand.shape[0]))].numpy().astype(np.float64)
            centre = (idx - (size - 1) / 2.0) * spacing
            if all(np.linalg.norm(centre - np.asarray(o["center_mm"])) > 1.5 * (r + o["radius_mm"]) for o in blobs):
                break
        lo_o, hi_o = _OEDEMA_FACTOR[attrs["oedema"]]
        blobs.append({
            "center_mm": np.round(centre, 2).tolist(),
            "radius_mm": round(r, 2),
            "core_fraction": round(float(rng.uniform(0.45, 0.65)), 3),
            "oedema_factor": round(float(rng.uniform(lo_o, hi_o)), 3),
        })
    return blobs


def _soft(x: torch.Tensor, width: float) -> torch.Tensor:
    return torch.sigmoid(x / max(width, 1e-3))


def _paint_lesion(vols: torch.Tensor, mask: torch.Tensor, blobs: list[dict[str, Any]], attrs: dict[str, Any],
                  spacing: float, rng: np.random.Generator) -> None:
    """In place: paint the blobs into the normalised sequences ``vols [4, n, n, n]``."""
    size = vols.shape[-1]
    lin = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0) * spacing
    fields = _smooth_field(rng, 2, 6, size, 1.0)  # shape irregularity, texture
    irregular, texture = fields[0], fields[1]
    spots = torch.zeros_like(vols[0])
    lesion = torch.zeros_like(vols[0])
    core = torch.zeros_like(vols[0])
    oedema = torch.zeros_like(vols[0])
    for b in blobs:
        cx, cy, cz = b["center_mm"]
        d2 = ((lin - cx) ** 2)[:, None, None] + ((lin - cy) ** 2)[None, :, None] + ((lin - cz) ** 2)[None, None, :]
        rho = d2.sqrt_() / (b["radius_mm"] * (1 + 0.15 * irregular))
        w = spacing / b["radius_mm"] * 0.5
        lesion = torch.maximum(lesion, _soft(1 - rho, w))
        core = torch.maximum(core, _soft(b["core_fraction"] - rho, w))
        oedema = torch.maximum(oedema, _soft(1 + b["oedema_factor"] - rho, 2 * w))
        if attrs["t1_signal"] == "bright_spots":  # 3-5 small haemorrhagic foci inside the blob
            for _ in range(int(rng.integers(3, 6))):
                d = rng.standard_normal(3)
                sc = np.asarray(b["center_mm"]) + d / np.linalg.norm(d) * rng.uniform(0, 0.6) * b["radius_mm"]
                sr = max(0.25 * b["radius_mm"], 1.2 * spacing)
                d2 = (((lin - sc[0]) ** 2)[:, None, None] + ((lin - sc[1]) ** 2)[None, :, None]
                      + ((lin - sc[2]) ** 2)[None, None, :])
                spots = torch.maximum(spots, _soft(1 - d2.sqrt_() / sr, spacing / sr * 0.5))
    m = mask.float()
    lesion, core = lesion * m, core * m
    oedema = oedema * m * (1 - lesion)
    rim = (lesion - core).clamp_min(0)
    tex = 1 + 0.08 * texture

    t1_val = {"hypo": 0.55, "iso": 1.0, "bright_spots": 0.95}[attrs["t1_signal"]]
    t1_lesion = torch.full_like(lesion, t1_val) * tex
    if attrs["t1_signal"] == "bright_spots":
        t1_lesion = t1_lesion + 1.3 * spots
    t2_val = {"hypo": 0.5, "iso": 1.05, "hyper": 2.4}[attrs["t2_signal"]]
    enh = attrs["enhancement"]
    if enh == "ring":
        t1c_lesion = t1_lesion * (2.4 * rim + 0.8 * core) / lesion.clamp_min(1e-3)
    elif enh == "solid":
        t1c_lesion = t1_lesion * 2.2
    else:
        t1c_lesion = t1_lesion
    targets = {
        "t1": (t1_lesion, 0.85),
        "t1c": (t1c_lesion, 0.85),
        "t2": (torch.full_like(lesion, t2_val) * tex, 1.25),
        "flair": (torch.full_like(lesion, 1.45) * tex, 1.9),
    }
    for k, seq in enumerate(SEQUENCES):
        les_val, oed_val = targets[seq]
        v = vols[k]
        v.mul_(1 - lesion - oedema).add_(lesion * les_val).add_(oedema * oed_val * tex)


def _recontrast(vols: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Gamma, bias field, scanner scale and noise per sequence; int16 ``[4, n, n, n]`` (0 outside the brain)."""
    size = vols.shape[-1]
    bias = torch.exp(_smooth_field(rng, 4, 3, size, 0.12))
    m = mask.float()
    out = np.zeros(vols.shape, dtype=np.int16)
    params: dict[str, Any] = {}
    for k, seq in enumerate(SEQUENCES):
        gamma = float(rng.uniform(0.8, 1.25))
        scale = float(_BASE_SCALE[seq] * np.exp(rng.uniform(-0.4, 0.4)))
        sigma = float(rng.uniform(0.01, 0.03))
        noise = torch.from_numpy(rng.standard_normal((size, size, size), dtype=np.float32))
        v = (vols[k].clamp_min(0).pow(gamma) * bias[k] + sigma * noise).abs() * m * scale
        out[k] = np.clip(np.rint(v.numpy()), 0, 32767).astype(np.int16)
        params[seq] = {"gamma": round(gamma, 4), "scale": round(scale, 2), "noise_sigma": round(sigma, 4)}
    return out, params


def synthesize_patient(
    source: BrainSource, label: int, rng: np.random.Generator, size: int = 96, fov_mm: float = DEFAULT_FOV_MM
) -> tuple[np.ndarray, dict[str, Any]]:
    """One synthetic patient from ``source`` with a lesion of class ``label``.

    Returns:
        int16 ``[4, size, size, size]`` (sequence order :data:`SEQUENCES`, RAS voxel order, affine
        :func:`cohort_affine`) and a record (``source``, ``attributes``, ``blobs``, ``transform``, ``contrast``,
        ``clinical``: the complete clinical values before any blanking).
    """
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {label}")
    spacing = fov_mm / size
    warped, tparams = _warp(source, rng, size, fov_mm)
    mask = warped[4] > 0.5
    vols = warped[:4] * mask
    attrs = _draw_attributes(label, rng)
    blobs = _place_blobs(label, attrs, mask, warped[5], spacing, rng)
    _paint_lesion(vols, mask, blobs, attrs, spacing, rng)
    arr, cparams = _recontrast(vols, mask, rng)
    clinical = _draw_clinical(label, rng)
    record = {"source": source.name, "attributes": attrs, "blobs": blobs, "transform": tparams,
              "contrast": cparams, "clinical": clinical}
    return arr, record

