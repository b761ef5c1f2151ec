"""The int8 file of a class refit: the model it was refit from, with only the refit rows replaced.

A class refit (training.fit.trainer.ClassRefit) changes nothing but some rows of the head's last
class convolutions. Calibrating its int8 file afresh would move every class a little (ranges
measured again, rounded again): on the shipped model push_cart's int8 AP50 moved 2.4 points
for a refit that never touched it. Grafting instead keeps the served int8 file's calibration
and every other weight byte for byte, and quantises the new rows the way the file quantises
weights: symmetric per output channel within the file's range (7 bits, or 8 in a file from before
training.export.qdq.WEIGHT_BITS), the int32 bias at input scale x weight scale.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.export.qdq import CHANNEL_ARRAYS, quantise_channels, weight_qmax

GRAFT_NOTE = "score rows of {classes} grafted from {source}"


def class_score_convs(model):  # noqa: ANN001, ANN201
    """The detection head's last convolution of each class branch (one per level): their output
    channel k is class k's score logit, and nothing else reads their weights."""
    return [branch[-1] for branch in model.model[-1].cv3]


def class_names(model) -> dict[int, str]:  # noqa: ANN001
    return model.names if isinstance(model.names, dict) else dict(enumerate(model.names))


class GraftError(ValueError):
    """The int8 file and the refit do not fit together; the message says how."""


def _input_scale(proto, weight_output: str, initializers: dict) -> float:  # noqa: ANN001
    """Scale of the activation the convolution reading `weight_output` takes in."""
    from onnx import numpy_helper

    conv = next((n for n in proto.graph.node if n.op_type == "Conv" and weight_output in n.input), None)
    if conv is None:
        raise GraftError(f"no convolution reads {weight_output}")
    dequantize = next((n for n in proto.graph.node if conv.input[0] in n.output), None)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        raise GraftError(f"{conv.name} does not read a quantised activation")
    return float(numpy_helper.to_array(initializers[dequantize.input[1]]))


ROW_ARRAYS = ("weight_quantized", "weight_scale", "weight_zero_point", "bias_quantized", "bias_quantized_scale")


def graft_score_rows(int8_file: Path, refit_checkpoint: Path, classes: Sequence[str], out: Path,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write `out`: `int8_file` with the score rows of `classes` taken from `refit_checkpoint`.
    `metadata` (the refit's own export's) replaces the file's model version, dataset and training
    arguments; its calibration note gains what was grafted."""
    import onnx
    import torch
    from onnx import numpy_helper

    from training.export.export import checkpoint_model, load_checkpoint

    proto = onnx.load(str(int8_file))
    model = checkpoint_model(load_checkpoint(refit_checkpoint))
    names = class_names(model)
    props = {p.key: p.value for p in proto.metadata_props}
    if "names" not in props or {int(k): str(v) for k, v in ast.literal_eval(props["names"]).items()} != names:
        raise GraftError(f"{int8_file} and {refit_checkpoint} do not have the same classes in the same order")
    rows = [k for k in sorted(names) if names[k] in classes]
    if len(rows) != len(set(classes)):
        raise GraftError(f"not among the model's classes: {', '.join(sorted(set(classes) - set(names.values())))}")
    inits = {init.name: init for init in proto.graph.initializer}
    last = len(model.model) - 1
    for level, conv in enumerate(class_score_convs(model)):
        prefix = f"model.{last}.cv3.{level}.{len(model.model[-1].cv3[level]) - 1}"
        try:
            arrays = {part: numpy_helper.to_array(inits[f"{prefix}.{part}"]).copy() for part in ROW_ARRAYS}
        except KeyError as missing:
            raise GraftError(f"{int8_file}: no per-channel quantised {prefix} ({missing})") from None
        if arrays["weight_scale"].shape != (len(names),) or np.any(arrays["weight_zero_point"] != 0):
            raise GraftError(f"{int8_file}: {prefix} is not quantised symmetric per output channel")
        input_scale = _input_scale(proto, f"{prefix}.weight_DequantizeLinear_Output", inits)
        with torch.no_grad():
            weight, bias = conv.weight.numpy().astype(np.float64), conv.bias.numpy().astype(np.float64)
        quantised = quantise_channels(weight[rows], bias[rows], input_scale, weight_qmax(props))
        for part, value in zip(CHANNEL_ARRAYS, quantised):
            arrays[part][rows] = value
        for part, value in arrays.items():
            inits[f"{prefix}.{part}"].CopyFrom(numpy_helper.from_array(value, f"{prefix}.{part}"))
    source = (metadata or {}).get("gridwatch_model_version") or Path(refit_checkpoint).name
    note = GRAFT_NOTE.format(classes=", ".join(names[r] for r in rows), source=source)
    updates = {k: v for k, v in (metadata or {}).items()
               if k in ("gridwatch_model_version", "gridwatch_dataset_hash", "gridwatch_train_args")}
    updates["gridwatch_calibration"] = "; ".join(filter(None, [props.get("gridwatch_calibration"), note]))
    for prop in proto.metadata_props:
        if prop.key in updates:
            prop.value = updates.pop(prop.key)
    for key, value in updates.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out
