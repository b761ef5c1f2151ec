"""`gridwatch train --activation`: the start model's activations converted, its weights kept."""

from __future__ import annotations

import pytest
import torch

from tests.support.shared_data import COCO_INT8
from tests.support.training import bootstrapped_pt

pytestmark = pytest.mark.skipif(not COCO_INT8.is_file(), reason=f"{COCO_INT8} not found")


def _count(model, kind):
    # Ultralytics' Conv layers share one activation module: count each use, not each object.
    return sum(isinstance(m, kind) for _, m in model.named_modules(remove_duplicate=False))


def test_relu_start_keeps_weights_and_survives_a_rebuild_from_yaml(tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    from training.export.export import load_checkpoint
    from training.fit.train import with_activation

    start = bootstrapped_pt(tmp_path / "coco.pt", n_images=4)
    converted = with_activation(start, "relu", tmp_path / "start")
    before, after = load_checkpoint(start)["model"].float(), load_checkpoint(converted)["model"].float()
    assert _count(before, torch.nn.SiLU) > 50
    assert _count(after, torch.nn.SiLU) == 0 and _count(after, torch.nn.ReLU) > 50
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(before.eval()(x)[0], after.eval()(x)[0])  # the swap changes the function
    # Ultralytics' trainer builds the network from the yaml, then loads the weights into it.
    rebuilt = DetectionModel(after.yaml, nc=after.yaml["nc"], verbose=False)
    assert _count(rebuilt, torch.nn.ReLU) > 50
    assert _count(rebuilt, torch.nn.SiLU) == 0
    back = load_checkpoint(with_activation(converted, "silu", tmp_path / "back"))["model"]
    assert _count(back, torch.nn.ReLU) == 0


def test_unknown_activation_is_refused(tmp_path):
    from training.fit.train import TrainError, with_activation

    with pytest.raises(TrainError, match="unknown activation 'gelu'"):
        with_activation(tmp_path / "missing.pt", "gelu", tmp_path)
