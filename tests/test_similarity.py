"""One prototype similarity for the prototype loss and the quality score."""

from __future__ import annotations

import pytest
import torch

from monai_dymo.losses import PrototypeLoss
from monai_dymo.selection import quality_score
from monai_dymo.similarity import METRICS, check_metric, prototype_logits


@pytest.mark.parametrize("metric", METRICS)
def test_quality_score_and_prototype_loss_share_the_similarity(metric):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g)
    protos = torch.randn(3, 4, generator=g)
    logits = prototype_logits(z.double(), protos, 0.1, metric)
    torch.testing.assert_close(quality_score(z, protos, 0.1, metric), torch.softmax(logits, -1).amax(-1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = PrototypeLoss(0.1, metric=metric)(z, y, protos)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(prototype_logits(z, protos, 0.1, metric), y))


def test_metric_names():
    assert check_metric("Cosine") == "cosine"
    with pytest.raises(ValueError, match="metric must be one of"):
        check_metric("manhattan")
