"""Rewrites of a QDQ int8 graph that change how ONNX Runtime runs it, not what it computes; and
the weights' range, 7 bits, which every x86 CPU's int8 kernel computes without overflow."""

from __future__ import annotations

import numpy as np

from detector.model import WEIGHT_BITS_KEY


def graph_index(graph) -> tuple[dict, dict[str, list], dict]:
    """(node producing each tensor, nodes reading each tensor, initializers by name)."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return {o: n for n in graph.node for o in n.output}, consumers, {t.name: t for t in graph.initializer}


def _scalar(weights: dict, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    if name not in weights:
        return None
    value = numpy_helper.to_array(weights[name])
    return value if value.size == 1 else None


def _concat_quantisers(node, producers: dict, consumers: dict, weights: dict) -> list[tuple[str, str]] | None:
    """The (scale, zero point) initializers of a quantised Concat's inputs and output, or None
    when it is not the plain DQ -> Concat -> Q form with scalar ones of one integer type."""
    if node.op_type != "Concat":
        return None
    readers = consumers.get(node.output[0], [])
    sources = [producers.get(name) for name in node.input]
    if not readers or any(n.op_type != "QuantizeLinear" for n in readers):
        return None
    if any(n is None or n.op_type != "DequantizeLinear" or len(n.input) < 3 for n in sources):
        return None
    quantisers = [(n.input[1], n.input[2]) for n in readers + sources]
    scales = [_scalar(weights, s) for s, _ in quantisers]
    zero_points = [_scalar(weights, z) for _, z in quantisers]
    if any(s is None for s in scales) or any(z is None for z in zero_points):
        return None
    if len({z.dtype for z in zero_points}) != 1 or zero_points[0].dtype not in (np.uint8, np.int8):
        return None
    return quantisers


def _bias_rescales(scale_names: set[str], producers: dict, consumers: dict, weights: dict) -> list | None:
    """The int32 biases to requantise when these scales change: (bias DequantizeLinear, the
    scale its input is read with) per Conv reading such a tensor. A bias is stored at input
    scale x weight scale, and ONNX Runtime fuses a Conv into QLinearConv only while that holds;
    unfused, it runs in float (measured: 12 convs left so, a 7.3 ms session instead of 4.0). None when a tensor with
    one of these scales feeds another kind of node with a quantised bias, which is not handled."""
    rescales = []
    for dq in (n for name in scale_names for n in consumers.get(name, []) if n.op_type == "DequantizeLinear"):
        for reader in consumers.get(dq.output[0], []):
            biased = [producers.get(name) for name in reader.input[2:]]
            biased = [n for n in biased if n is not None and n.op_type == "DequantizeLinear"
                      and n.input[0] in weights and weights[n.input[0]].data_type == 6]  # INT32
            if not biased:
                continue
            if (reader.op_type != "Conv" or reader.input[0] != dq.output[0] or len(biased) != 1
                    or len(consumers.get(biased[0].output[0], [])) != 1):
                return None
            rescales.append((biased[0], dq.input[1]))
    return rescales


def share_concat_scales(proto) -> int:
    """Give each quantised Concat's inputs and output one scale and zero point, those of the
    union of their ranges, in place; returns how many Concats it changed (0 on a graph it has
    already aligned).

    ONNX Runtime runs DQ -> Concat -> Q as QLinearConcat, which requantises every input whose
    scale differs from the output's, element by element; with one scale it copies. Measured on
    the shipped YOLOv8n int8 at 448x256 on 2 cores (docs/benchmarks.md): the 13 concats went
    from 0.64 to 0.28 ms and the session from 4.14 to 3.73-3.86 ms, mAP50 on the real val split
    0.622 -> 0.626. The union clips nothing that calibration kept; the tensors whose range grows
    lose a little resolution, and the output is no longer requantised (rounded a second time).
    Tensors that share a quantiser (a Split's or MaxPool's input and output) move together, and
    Concats that share a tensor are aligned as one group."""
    from onnx import numpy_helper

    graph = proto.graph
    producers, consumers, weights = graph_index(graph)
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    pairs: set[tuple[str, str]] = set()
    concats: dict[str, int] = {}  # a Concat's output scale -> how many Concats write at it
    for node in graph.node:
        quantisers = _concat_quantisers(node, producers, consumers, weights)
        if quantisers:
            pairs.update(quantisers)
            for name in (n for pair in quantisers for n in pair):
                parent[root(name)] = root(quantisers[0][0])
            concats[quantisers[0][0]] = concats.get(quantisers[0][0], 0) + 1
    groups: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs:
        groups.setdefault(root(pair[0]), []).append(pair)
    changed_concats = 0
    for members in groups.values():
        zero_type = _scalar(weights, members[0][1]).dtype
        if any(_scalar(weights, z).dtype != zero_type for _, z in members):
            continue
        info = np.iinfo(zero_type)
        ranges = [(float(_scalar(weights, s)), int(_scalar(weights, z))) for s, z in members]
        low = min((info.min - z) * s for s, z in ranges)
        high = max((info.max - z) * s for s, z in ranges)
        widest = [(s, z) for s, z in ranges if ((info.min - z) * s, (info.max - z) * s) == (low, high)]
        if widest:  # one of them already spans the union (ReLU outputs: the largest scale), exactly
            scale, zero_point = np.float32(widest[0][0]), np.array(widest[0][1], zero_type)
        else:
            scale = np.float32((high - low) / (info.max - info.min))
            zero_point = np.array(np.clip(round(info.min - low / float(scale)), info.min, info.max), zero_type)
        old = {s: float(_scalar(weights, s)) for s, _ in members}
        changed = {s for s, value in old.items() if value != scale}
        moved = {z for _, z in members if _scalar(weights, z) != zero_point}
        if not changed and not moved:
            continue
        rescales = _bias_rescales(changed, producers, consumers, weights)
        if rescales is None:
            continue
        for bias_dq, input_scale in rescales:
            ratio = old[input_scale] / float(scale)
            for name, convert in ((bias_dq.input[0], lambda b: np.round(b.astype(np.float64) * ratio).astype(np.int32)),
                                  (bias_dq.input[1], lambda s: (s.astype(np.float64) / ratio).astype(np.float32))):
                value = convert(numpy_helper.to_array(weights[name]))
                if len(consumers.get(name, [])) > 1:  # shared with another node: give this one its own
                    name = bias_dq.input[list(bias_dq.input).index(name)] = f"{name}_for_{bias_dq.name}"
                    weights[name] = graph.initializer.add()
                weights[name].CopyFrom(numpy_helper.from_array(value, name))
        for name in changed:
            weights[name].CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), name))
        for name in moved:
            weights[name].CopyFrom(numpy_helper.from_array(zero_point, name))
        changed_concats += sum(concats.get(s, 0) for s in old)
    return changed_concats


# ONNX Runtime's U8S8 kernel on x86 CPUs without VNNI (AVX2 alone, AVX-512 before Cascade Lake,
# AMD before Zen 4) multiplies u8 activations by s8 weights with VPMADDUBSW, which adds each pair
# of products into an int16 and saturates past 32767. ReLU activations span 0..255 and 8-bit
# weights +-127, so a pair can reach 64770: on such a CPU the 8-bit shipped file lost 12.5 AP50
# points of garbage_pile and 24 of truck. Weights within +-64 (ONNX Runtime's reduce_range, 7 bits)
# never overflow (255 x 64 x 2 = 32640), and per output channel cost no measurable AP in exact
# arithmetic (weights/README.md, "Int8 on CPUs without VNNI").
WEIGHT_BITS = 7
WEIGHT_QMAX = 64


def weight_qmax(metadata: dict[str, str]) -> int:
    """The largest magnitude a file's int8 weights take: 64 where they are 7-bit, else 127."""
    return WEIGHT_QMAX if metadata.get(WEIGHT_BITS_KEY) == str(WEIGHT_BITS) else 127


# A quantised Conv's initializers, by their suffix after the Conv's name, as quantise_channels returns them.
CHANNEL_ARRAYS = ("weight_quantized", "weight_scale", "bias_quantized", "bias_quantized_scale")


def quantise_channels(weight: np.ndarray, bias: np.ndarray, input_scale: float,
                      qmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 weights within +-qmax and their int32 bias, as ONNX
    Runtime quantises a Conv (CHANNEL_ARRAYS: weight, weight scale, bias, bias scale = input
    scale x weight scale)."""
    flat = np.abs(weight.reshape(len(weight), -1).astype(np.float64))
    step = np.maximum(flat.max(axis=1) / qmax, 1e-12)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    quantised = np.clip(np.round(weight / step.reshape(shape)), -qmax, qmax).astype(np.int8)
    bias_scale = input_scale * step
    return (quantised, step.astype(np.float32), np.round(bias / bias_scale).astype(np.int32),
            bias_scale.astype(np.float32))


NARROWED_NOTE = f"weights narrowed to {WEIGHT_BITS} bits (+-{WEIGHT_QMAX}) from the fp32 file"


def narrow_weights(proto, fp32_proto) -> int:  # noqa: ANN001
    """Requantise every Conv weight of an int8 QDQ graph to 7 bits (+-64) from the fp32 model it was
    quantised from, in place; its activations' calibration is kept, and its metadata says what was
    done (WEIGHT_BITS_KEY, a note in gridwatch_calibration). Returns the convolutions done.

    From the fp32 weights, not by halving the 8-bit ones: rounding twice cost push_cart 6 AP50
    points. A first convolution reading the BGR pixel input (training.export.export.take_pixels)
    has its input channels reversed from the fp32 file's."""
    from onnx import numpy_helper

    producers, consumers, weights = graph_index(proto.graph)
    fp32 = {t.name: t for t in fp32_proto.graph.initializer}
    pixels = f"{proto.graph.input[0].name}_nchw"
    done = 0
    for name in [n for n in weights if n.endswith(".weight_quantized")]:
        prefix = name[: -len(".weight_quantized")]
        if f"{prefix}.weight" not in fp32 or f"{prefix}.bias" not in fp32:
            raise ValueError(f"the fp32 model has no {prefix}.weight and .bias: not the model this int8 file came from")
        weight = numpy_helper.to_array(fp32[f"{prefix}.weight"]).astype(np.float64)
        bias = numpy_helper.to_array(fp32[f"{prefix}.bias"]).astype(np.float64)
        weight_dq = next(n for n in consumers[name] if n.op_type == "DequantizeLinear")
        conv = next(n for n in consumers[weight_dq.output[0]] if n.op_type == "Conv")
        input_dq = producers[conv.input[0]]
        if input_dq.input[0] == pixels:
            weight = np.ascontiguousarray(weight[:, ::-1])
        if weight.shape != numpy_helper.to_array(weights[name]).shape:
            raise ValueError(f"{prefix}: fp32 weight {weight.shape} does not fit the int8 file's")
        input_scale = float(numpy_helper.to_array(weights[input_dq.input[1]]))
        for part, value in zip(CHANNEL_ARRAYS, quantise_channels(weight, bias, input_scale, WEIGHT_QMAX)):
            weights[f"{prefix}.{part}"].CopyFrom(numpy_helper.from_array(value, f"{prefix}.{part}"))
        done += 1
    props = {p.key: p for p in proto.metadata_props}
    for key in (WEIGHT_BITS_KEY, "gridwatch_calibration"):
        if key not in props:
            props[key] = proto.metadata_props.add(key=key, value="")
    props[WEIGHT_BITS_KEY].value = str(WEIGHT_BITS)
    notes = props["gridwatch_calibration"]
    if NARROWED_NOTE not in notes.value:
        notes.value = "; ".join(filter(None, [notes.value, NARROWED_NOTE]))
    return done
