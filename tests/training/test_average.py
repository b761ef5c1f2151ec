"""`gridwatch average`: weighted mean of checkpoints of one lineage, as a run `--finish` takes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.support.shared_data import COCO_INT8
from tests.support.training import bootstrapped_pt

pytestmark = pytest.mark.skipif(not COCO_INT8.is_file(), reason=f"{COCO_INT8} not found")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from training.export.export import load_checkpoint

    tmp = tmp_path_factory.mktemp("average")
    first = bootstrapped_pt(tmp / "first.pt", n_images=4)
    ckpt = load_checkpoint(first)
    model = ckpt["model"].float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # a second checkpoint of the same architecture, every weight moved
    ckpt["model"] = model.half()
    second = tmp / "second.pt"
    torch.save(ckpt, second)
    return first, second


def _state(path):
    from training.export.export import load_checkpoint

    return load_checkpoint(path)["model"].float().state_dict()


def test_weighted_mean_of_every_weight(pair, tmp_path):
    from training.fit.average import average_checkpoints

    out = average_checkpoints(pair, tmp_path / "avg.pt", shares=[1, 3])
    a, b, mean = _state(pair[0]), _state(pair[1]), _state(out)
    name = next(k for k in a if k.endswith("conv.weight"))
    torch.testing.assert_close(mean[name], 0.25 * a[name] + 0.75 * b[name], atol=2e-3, rtol=1e-3)
    assert not torch.equal(mean[name], a[name])


def test_cli_writes_a_run_that_finish_takes_and_rejects_bad_input(pair, tmp_path):
    def average(*args):
        return subprocess.run([sys.executable, "-m", "serving.cli", "average", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    ok = average("--weights", *pair, "--project", tmp_path, "--name", "soup")
    assert ok.returncode == 0, ok.stderr
    best = tmp_path / "soup" / "weights" / "best.pt"
    assert best.is_file() and "gridwatch train --finish" in ok.stdout
    from training.fit.train import existing_run

    assert existing_run(tmp_path, "soup").best == best
    written = best.read_bytes()
    again = average("--weights", best, pair[0], "--project", tmp_path, "--name", "soup")
    assert again.returncode == 2 and "give the average a new --name" in again.stderr
    assert best.read_bytes() == written
    alone = average("--weights", pair[0], "--name", "x", "--project", tmp_path)
    assert alone.returncode == 2 and "at least two" in alone.stderr
    shares = average("--weights", *pair, "--shares", "1", "--name", "y", "--project", tmp_path)
    assert shares.returncode == 2 and "one non-negative share" in shares.stderr
