"""Weight averaging ("model soup") of checkpoints that share one lineage.

Fine-tuning runs that continue from one another sit in one basin of the loss; their
average often scores above each of them (the shipped model is the average of two stages
of one training, see weights/gridwatch.md). Averaging unrelated runs gives noise, so the
result goes through `gridwatch train --finish` and champion/challenger like any other.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from training.export.export import ExportError, checkpoint_model, load_checkpoint


def average_checkpoints(weights: Sequence[str | Path], out: str | Path, shares: Sequence[float] | None = None) -> Path:
    """Write the weighted mean of the checkpoints' models to `out` (training args of the first)."""
    import torch

    if len(weights) < 2:
        raise ExportError("averaging needs at least two checkpoints")
    shares = list(shares) if shares else [1.0] * len(weights)
    if len(shares) != len(weights) or min(shares) < 0 or sum(shares) <= 0:
        raise ExportError("give one non-negative share per checkpoint")
    checkpoints = [load_checkpoint(w) for w in weights]
    models = [checkpoint_model(c) for c in checkpoints]
    states = [m.state_dict() for m in models]
    for path, state in zip(weights[1:], states[1:]):
        if state.keys() != states[0].keys() or any(state[k].shape != v.shape for k, v in states[0].items()):
            raise ExportError(f"{path}: not the same architecture as {weights[0]}")
    total = float(sum(shares))
    mean = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean[key] = sum(s[key] * (w / total) for s, w in zip(states, shares)).to(value.dtype)
        else:
            mean[key] = value  # counters such as num_batches_tracked
    model = copy.deepcopy(models[0])
    model.load_state_dict(mean)
    result = {**checkpoints[0], "model": model.half(), "ema": None, "optimizer": None, "epoch": -1,
              "averaged_from": [str(w) for w in weights], "average_shares": shares}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, out)
    return out
