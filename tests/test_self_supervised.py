"""Self-supervised pretraining: the contrastive engine, the views, the unlabelled datalist list and the bundle stage."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from monai_dymo.cohort import CohortSpec, contrastive_views, load_split, load_self_supervised, make_plan
from monai_dymo.engines.contrastive import pretrain_contrastive
from monai_dymo.errors import DyMoInputError
from tests.cohort_fixtures import make_tiny_cohort


def _tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))


def _stripes(n: int, size: int = 16) -> torch.Tensor:
    """Half horizontal, half vertical stripes with noise: ``[n, 1, size, size]``."""
    g = torch.Generator().manual_seed(0)
    out = 0.3 * torch.randn(n, 1, size, size, generator=g)
    out[: n // 2, :, ::4, :] += 1.0
    out[n // 2 :, :, :, ::4] += 1.0
    return out


def test_contrastive_pretraining_trains_the_backbone_and_lowers_the_loss():
    images = _stripes(32)
    views = contrastive_views(2, (16, 16))
    torch.manual_seed(0)
    net = _tiny_backbone()
    before = [p.detach().clone() for p in net.parameters()]
    epochs = []
    history = pretrain_contrastive(net, images, views, epochs=15, batch_size=16, lr=3e-3, seed=0,
                                   progress=lambda e, loss: epochs.append(e))
    assert len(history) == 15 and epochs == list(range(1, 16))
    assert all(torch.isfinite(torch.tensor(history)))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3  # the two views of an image are found more easily
    assert not net.training


def test_contrastive_pretraining_is_seeded():
    images = _stripes(8)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        net = _tiny_backbone()
        pretrain_contrastive(net, images, contrastive_views(2, (16, 16)), epochs=2, batch_size=4, seed=3)
        runs.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_contrastive_pretraining_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        pretrain_contrastive(_tiny_backbone(), torch.zeros(1, 1, 16, 16), lambda x: x, epochs=1)


@pytest.mark.parametrize("dims, size", [(2, (3, 20, 24)), (3, (1, 12, 12, 12))])
def test_contrastive_views_keep_the_shape_and_differ(dims, size):
    torch.manual_seed(0)
    image = torch.rand(*size)
    views = contrastive_views(dims, size[1:], flip=True)
    a, b = torch.as_tensor(views(image)), torch.as_tensor(views(image))
    assert a.shape == b.shape == image.shape
    assert not torch.equal(a, b)


def test_unlabelled_list_is_read_without_labels(tmp_path):
    cfg = make_tiny_cohort(tmp_path / "data", n_train=3, n_val=3, n_test=3, size=8)
    datalist = json.loads(open(cfg["datalist"]).read())
    datalist["unlabelled"] = [{**e, "patient_id": "u" + e["patient_id"]} for e in datalist["training"]]
    datalist["unlabelled"][1].pop("label")
    open(cfg["datalist"], "w").write(json.dumps(datalist))
    spec = CohortSpec.from_config(cfg)
    entries = load_split(spec, "unlabelled")
    assert [e["patient_id"] for e in entries] == ["up000", "up001", "up002"]
    assert all("label" not in e for e in entries) and entries[0]["ct"].endswith("ct.nii.gz")
    assert len(load_split(spec, "training")) == 3  # the labelled splits are as before


def test_plan_self_supervised_is_off_by_default_and_checked():
    assert make_plan({}).self_supervised is False
    assert make_plan({}, {"self_supervised": True}).self_supervised is True
    with pytest.raises(DyMoInputError, match="self_supervised must be true or false"):
        make_plan({}, {"self_supervised": "yes"})


def test_load_self_supervised_without_the_stage_says_what_to_run(tmp_path):
    cfg = make_tiny_cohort(tmp_path / "data", n_train=3, n_val=3, n_test=3, size=8)
    with pytest.raises(FileNotFoundError, match="run the pretrain stage with the same --model_dir"):
        load_self_supervised(nn.Module(), tmp_path / "models", CohortSpec.from_config(cfg))


@pytest.mark.slow
def test_pretrain_stage_then_train_starts_from_its_backbones(tmp_path):
    """The bundle's pretrain stage reads the training split and the unlabelled list (never validation or test), writes
    one backbone per convolutional image encoder, and the train stage's network starts from them with the plan's
    self_supervised."""
    from monai.bundle import ConfigParser

    from tests.test_bundle_cohort import run_stage, stage_configs

    cfg = make_tiny_cohort(tmp_path / "data", n_train=6, n_val=3, n_test=3, size=16)
    datalist = json.loads(open(cfg["datalist"]).read())
    datalist["unlabelled"] = [{"patient_id": f"u{i}", "ct": e["ct"], "xray": e["xray"]}
                              for i, e in enumerate(datalist["training"][:4])]
    open(cfg["datalist"], "w").write(json.dumps(datalist))
    cohort_file = tmp_path / "my_cohort.yaml"
    cohort_file.write_text(yaml.safe_dump({"cohort": {**cfg, "plan": {"self_supervised": True}}}))
    bundle = tmp_path / "bundle"
    prepare = run_stage("prepare", cohort_file, bundle)
    with_ct = sum(1 for e in datalist["unlabelled"] if e["ct"])
    assert f"unlabelled / ct (image3d): {with_ct} of 4 observed" in prepare.stdout + prepare.stderr  # checked too
    run_stage("pretrain", cohort_file, bundle, "--pretrain_epochs", "2", "--pretrain_batch_size", "4")
    models = bundle / "models" / "tiny"
    record = json.loads((models / "self_supervised.json").read_text())
    observed = {m: sum(1 for e in datalist["training"] + datalist["unlabelled"] if e.get(m)) for m in ("ct", "xray")}
    assert {m: v["images"] for m, v in record["modalities"].items()} == observed
    assert record["unlabelled_patients"] == 4 and all(len(v["loss"]) == 2 for v in record["modalities"].values())

    parser = ConfigParser()
    parser.read_config([*stage_configs("train.yaml"), str(cohort_file)])
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    parser["network_def#dim"] = 16
    network = parser.get_parsed_content("network")
    assert parser.get_parsed_content("plan").self_supervised is True
    assert load_self_supervised(network, models, parser.get_parsed_content("spec")) == {
        "ct": len(torch.load(models / "self_supervised_ct.pt")), "xray": len(torch.load(models / "self_supervised_xray.pt"))}
    saved = torch.load(models / "self_supervised_xray.pt")
    own = network.encoders["xray"].features.state_dict()
    assert all(torch.equal(own[k], saved[k]) for k in saved)


def test_pretraining_an_encoder_that_does_not_read_the_image_says_so(tmp_path):
    """A mirror_3d encoder reads the volume and its asymmetry (two channels): pretraining it on the volume stops with one
    line naming the modality, before any epoch."""
    from monai_dymo.cohort import build_cohort_fusion, pretrain_image_encoders

    cfg = make_tiny_cohort(tmp_path / "data", n_train=6, n_val=3, n_test=3, size=16)
    cfg["modalities"] = [m for m in cfg["modalities"] if m["kind"] == "image3d"]
    spec = CohortSpec.from_config(cfg)
    network = build_cohort_fusion(spec, None, {"backbone_3d": "small"}, dim=16, mirror_3d=True)
    with pytest.raises(DyMoInputError, match=r"modality 'ct': its encoder backbone does not read .*no mirror_3d"):
        pretrain_image_encoders(spec, network, None, tmp_path / "models", epochs=1, cache=None)
    assert not (tmp_path / "models" / "self_supervised.json").exists()


def test_histogram_only_encoders_have_nothing_to_pretrain(tmp_path):
    """backbone 'none' (the demo's 3D encoders: a histogram through an MLP, no convolution) is not pretrained; with no
    convolutional image encoder at all the stage says which setting to change."""
    from monai_dymo.cohort import build_cohort_fusion, pretrain_image_encoders
    from monai_dymo.networks import has_convolutional_backbone

    cfg = make_tiny_cohort(tmp_path / "data", n_train=6, n_val=3, n_test=3, size=16)
    cfg["modalities"] = [m for m in cfg["modalities"] if m["kind"] == "image3d"]
    spec = CohortSpec.from_config(cfg)
    network = build_cohort_fusion(spec, None, {"backbone_3d": "none", "histogram_bins_3d": 4}, dim=16)
    assert not has_convolutional_backbone(network.encoders["ct"])
    assert has_convolutional_backbone(build_cohort_fusion(spec, None, {"backbone_3d": "small"}, dim=16).encoders["ct"])
    with pytest.raises(DyMoInputError, match="no convolutional image encoder to pretrain"):
        pretrain_image_encoders(spec, network, None, tmp_path / "models", epochs=1, cache=None)
