"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (deterministic reductions, no oversubscription), restoring the count after.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def toy_fusion():
    """``(ToyFusionNet, its SubsetCalibration)`` over modalities ``("ct", "pet", "clin")``, 3 classes, seeded."""
    from monai_dymo.calibration import fit_calibration
    from tests.toy_fusion import ToyFusionNet

    torch.manual_seed(0)
    net = ToyFusionNet().eval()
    g = torch.Generator().manual_seed(0)
    batches = [{**{n: torch.randn(12, 4, generator=g) for n in net.modalities}, "label": torch.arange(12) % 3}
               for _ in range(2)]
    return net, fit_calibration(net.encode, net.fuse, batches, modalities=net.modalities, num_classes=3,
                                progress=False)
