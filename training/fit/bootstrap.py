"""A trainable YOLOv8n rebuilt from an ONNX export: the int8 COCO model (our only pretrained
start) or a shipped gridwatch model (where `gridwatch retrain` fine-tunes from).

No fp32 COCO checkpoint exists offline. The COCO ONNX file keeps, for each conv, an int8
weight with a per-tensor scale and zero point, and the batch-norm folded into a float
bias; an fp32 export (weights/gridwatch-fp32.onnx) keeps the fused weight and bias as they
are. We put each weight into the matching module of `yolov8n.yaml` and give each
BatchNorm the folded bias.

A BatchNorm that merely passes the bias through (weight 1, mean 0, var 1) reproduces
the ONNX model in eval mode, but in train mode it normalises by batch statistics that
have nothing to do with 1 and 0, and the first fine-tuning steps wreck the pretrained
features. So we measure each conv's real output mean and variance on real images and
store them as the BN statistics, with weight and bias chosen so eval output is
unchanged: bn(x) = (x - mu) / sqrt(var + eps) * sqrt(var + eps) + (mu + b) = x + b.
Train-mode normalisation then sees statistics close to the stored ones.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from detector.boxes import letterbox_into, to_input

QUANT_SUFFIX = ".weight_quantized"

# Activations a network can be converted to. ReLU is what ONNX Runtime folds into the int8
# convolution (QDQ Conv + Relu -> one QLinearConv); SiLU becomes QLinearSigmoid + QLinearMul,
# profiled at 23% of an int8 session (issue #16). Values: the torch.nn class, as Ultralytics'
# model yaml names it ("nn.ReLU()").
ACTIVATIONS = {"silu": "SiLU", "relu": "ReLU"}


def convert_activation(model: torch.nn.Module, activation: str) -> None:
    """Every convertible activation of `model` becomes `activation`, the weights untouched.

    The model's yaml changes too: Ultralytics' trainer rebuilds the network from the yaml and
    loads the weights into it, so a yaml still naming SiLU would undo the swap."""
    class_name = ACTIVATIONS[activation]
    target = getattr(torch.nn, class_name)
    convertible = tuple(getattr(torch.nn, name) for name in ACTIVATIONS.values())
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, convertible) and not isinstance(child, target):
                setattr(module, name, target(inplace=True))
    model.yaml = {**model.yaml, "activation": f"nn.{class_name}()"}


def graph_activation(graph: onnx.GraphProto) -> str:
    """The activation an exported YOLOv8 uses: its convolutions feed Relu nodes after
    `gridwatch train --activation relu`, a Sigmoid and a Mul (SiLU) otherwise."""
    return "relu" if any(node.op_type == "Relu" for node in graph.node) else "silu"


def read_convs(onnx_path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[int, str], str]:
    """{module prefix: {"weight": fp32 array, "bias": array or None}}, the class names, and the
    activation (`graph_activation`).

    Dynamically quantised weights (`X.weight_quantized` + scale + zero point) are dequantised;
    fp32 conv weights (`X.weight`, 4-D) are taken as they are.
    """
    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs: dict[str, dict[str, np.ndarray]] = {}
    for name, q in inits.items():
        if name.endswith(QUANT_SUFFIX):
            prefix = name[: -len(QUANT_SUFFIX)]
            scale = inits[f"{prefix}.weight_scale"].astype(np.float32)
            zero = inits[f"{prefix}.weight_zero_point"].astype(np.float32)
            weight = (q.astype(np.float32) - zero) * scale
        elif name.startswith("model.") and name.endswith(".weight") and q.ndim == 4:
            prefix, weight = name[: -len(".weight")], q.astype(np.float32)
        else:
            continue
        convs[prefix] = {"weight": weight, "bias": inits.get(f"{prefix}.bias")}
    meta = {p.key: p.value for p in model.metadata_props}
    names = {int(k): v for k, v in ast.literal_eval(meta["names"]).items()}
    return convs, names, graph_activation(model.graph)


def match_head_width(model: torch.nn.Module, convs: dict[str, dict[str, np.ndarray]]) -> None:
    """Give the class branches (cv3) the hidden width the ONNX model has.

    Ultralytics sizes that width from the class count, but a model fine-tuned from COCO keeps
    COCO's width (80) with its own number of classes (Ultralytics' `load` carries it over), so
    the width the yaml gives for 18 classes (64) would not fit the shipped weights.
    """
    from ultralytics.nn.modules import Conv

    head = model.model[-1]
    first = convs.get(f"model.{len(model.model) - 1}.cv3.0.0.conv")
    if first is None or first["weight"].shape[0] == head.cv3[0][-1].in_channels:
        return
    width = first["weight"].shape[0]
    head.cv3 = torch.nn.ModuleList(
        torch.nn.Sequential(Conv(branch[0].conv.in_channels, width, 3), Conv(width, width, 3),
                            torch.nn.Conv2d(width, head.nc, 1))
        for branch in head.cv3
    )


def rebuild(onnx_path: Path, cfg: str = "yolov8n.yaml") -> torch.nn.Module:
    """An Ultralytics DetectionModel whose eval output matches the ONNX model's weights."""
    from ultralytics.nn.tasks import DetectionModel

    convs, names, activation = read_convs(onnx_path)
    model = DetectionModel(cfg, nc=len(names), verbose=False)
    match_head_width(model, convs)
    if activation != "silu":  # the yaml's default
        convert_activation(model, activation)
    modules = dict(model.named_modules())
    unused = set(convs)
    for prefix, tensors in convs.items():
        conv = modules.get(prefix)
        if conv is None or tuple(conv.weight.shape) != tensors["weight"].shape:
            raise ValueError(f"{onnx_path}: {prefix} has no matching conv in {cfg}")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(tensors["weight"]))
            bias = tensors["bias"]
            parent = modules.get(prefix.rsplit(".", 1)[0])
            bn = getattr(parent, "bn", None) if prefix.endswith(".conv") else None
            if bn is not None:
                bn.weight.fill_(1.0)
                bn.bias.copy_(torch.from_numpy(np.array(bias)))
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            elif bias is not None:
                conv.bias.copy_(torch.from_numpy(np.array(bias)))
        unused.discard(prefix)
    if unused:
        raise ValueError(f"{onnx_path}: initializers left unmapped: {sorted(unused)[:5]}")
    model.names = names
    model.eval()
    return model


def _letterboxed_batch(images: Iterable[np.ndarray], size: int) -> torch.Tensor:
    canvas = np.empty((size, size, 3), np.uint8)
    batch = []
    for image in images:
        letterbox_into(image, canvas)
        chw = np.empty((3, size, size), np.float32)
        to_input(canvas, chw)
        batch.append(chw)
    return torch.from_numpy(np.stack(batch))


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, images: list[np.ndarray], size: int = 640, batch: int = 8) -> None:
    """Store each conv's measured output statistics in its BN without changing eval output."""
    from ultralytics.nn.modules import Conv

    sums: dict[torch.nn.Module, list[torch.Tensor | int]] = {}

    def record(module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        x = output.detach().double()
        s = sums.setdefault(module, [0, 0.0, 0.0])
        s[0] += x.numel() // x.shape[1]
        s[1] = s[1] + x.sum(dim=(0, 2, 3))
        s[2] = s[2] + (x * x).sum(dim=(0, 2, 3))

    blocks = [m for m in model.modules() if isinstance(m, Conv) and hasattr(m, "bn")]
    hooks = [b.conv.register_forward_hook(record) for b in blocks]
    model.eval()
    try:
        for start in range(0, len(images), batch):
            model(_letterboxed_batch(images[start : start + batch], size))
    finally:
        for h in hooks:
            h.remove()
    for block in blocks:
        n, total, total_sq = sums[block.conv]
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_min(1e-6)
        bn = block.bn
        folded_bias = bn.bias.detach().double().clone()
        scale = (var + bn.eps).sqrt()
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_(scale.float())
        bn.bias.copy_((mean + folded_bias).float())


def save_checkpoint(model: torch.nn.Module, path: Path, source: Path,
                    licence: str = "AGPL-3.0 (rebuilt from Ultralytics COCO weights)") -> Path:
    """Write an Ultralytics-loadable .pt (YOLO(path) and YOLO(path).train(...) accept it)."""
    import ultralytics

    path.parent.mkdir(parents=True, exist_ok=True)
    model.args = {"imgsz": 640, "task": "detect"}
    torch.save(
        {
            "model": model.float(),
            "ema": None,
            "updates": 0,
            "optimizer": None,
            "epoch": -1,
            "train_args": {"task": "detect", "imgsz": 640},
            "version": ultralytics.__version__,
            "license": licence,
            "bootstrap_source": str(source),
        },
        path,
    )
    return path


def bootstrap(onnx_path: Path, out: Path, calibration_images: list[np.ndarray] | None = None) -> Path:
    model = rebuild(onnx_path)
    if calibration_images:
        calibrate_batchnorm(model, calibration_images)
    return save_checkpoint(model, out, onnx_path)
