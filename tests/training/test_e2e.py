"""CI-sized end to end, with the network blocked: build a tiny dataset from real images,
`gridwatch train` one epoch from the bootstrapped COCO start (which exports, evaluates,
writes the card and runs champion/challenger), `gridwatch eval` the ONNX files,
`gridwatch export` again, and resume an interrupted run.

Every subprocess runs with a sitecustomize that makes DNS look-ups and non-loopback
connects fail and records them: the test fails if anything tried the network (fonts,
AMP weights, telemetry, pip checks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from detector.files import REPO_ROOT, sha256_file
from tests.support.onnx_graph import assert_int8_differs_only_in_rows
from tests.support.shared_data import COCO_INT8, DATASETS
from tests.support.training import tiny_gridwatch_dataset

pytestmark = pytest.mark.slow

NETBLOCK = '''
import os, socket, traceback
_LOG = os.environ["GRIDWATCH_NETBLOCK_LOG"]
_LOCAL = {"localhost", "127.0.0.1", "::1", None}

def _record(what):
    with open(_LOG, "a") as fh:
        fh.write(what + "\\n" + "".join(traceback.format_stack(limit=40)) + "\\n")
    raise OSError("network blocked by gridwatch test: " + what)

_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host in _LOCAL:
        return _getaddrinfo(host, *args, **kwargs)
    _record(f"getaddrinfo {host}")
socket.getaddrinfo = getaddrinfo

_connect = socket.socket.connect
def connect(self, address):
    if self.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in _LOCAL):
        return _connect(self, address)
    _record(f"connect {address}")
socket.socket.connect = connect
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not COCO_INT8.is_file() or not DATASETS.is_dir():
        pytest.skip("shared weights/datasets not found")
    tmp = tmp_path_factory.mktemp("e2e")
    block = tmp / "netblock"
    block.mkdir()
    (block / "sitecustomize.py").write_text(NETBLOCK)
    log = tmp / "network-attempts.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(block), str(REPO_ROOT)]),
        GRIDWATCH_NETBLOCK_LOG=str(log),
        HOME=str(tmp / "home"),  # a fresh Ultralytics config dir: fonts must come from prepare()
        CUDA_VISIBLE_DEVICES="",
        MPLCONFIGDIR=str(tmp / "mpl"),
    )
    data = tiny_gridwatch_dataset(
        tmp / "data", {"garbage_overflow_cn": (24, 6), "thela_india": (8, 3), "facade_signs_spb": (8, 3)}
    )
    return {"tmp": tmp, "env": env, "log": log, "data": data}


def gridwatch(env, *args, timeout=280, check=True):
    proc = subprocess.run([sys.executable, "-m", "serving.cli", *map(str, args)], env=env["env"],
                          capture_output=True, text=True, timeout=timeout, cwd=env["tmp"])
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def no_network(env):
    attempts = env["log"].read_text()
    assert attempts == "", f"something tried the network:\n{attempts}"


@pytest.fixture(scope="module")
def trained(env):
    weights = env["tmp"] / "weights"
    # With repeat-factor sampling: the CI run also proves the custom trainer trains, pickled into
    # the dataloader's worker processes.
    proc = gridwatch(env, "train", "--data", env["data"], "--epochs", 1, "--imgsz", 192, "--batch", 8,
                     "--project", env["tmp"] / "runs", "--name", "ci", "--promote", "--weights-dir", weights,
                     "--repeat-threshold")
    return {"run": env["tmp"] / "runs" / "ci", "weights": weights, "out": proc.stdout + proc.stderr}


def test_train_writes_run_export_card_and_promotes_first_model(env, trained):
    run = trained["run"]
    for f in ("weights/best.pt", "weights/last.pt", "results.csv", "export/gridwatch-fp32.onnx",
              "export/gridwatch-int8.onnx", "export/gridwatch.md", "export/gridwatch.json"):
        assert (run / f).is_file(), f
    assert (run.parent / ".bootstrap" / "yolov8n-coco-bootstrap.pt").is_file()  # the default start
    assert "champion/challenger" in trained["out"] and "PROMOTE" in trained["out"]
    assert sorted(p.name for p in trained["weights"].iterdir() if p.is_file()) == [
        "gridwatch-fp32.json", "gridwatch-fp32.md", "gridwatch-fp32.onnx", "gridwatch-int8.json",
        "gridwatch-int8.md", "gridwatch-int8.onnx", "gridwatch.json", "gridwatch.md"]
    # the promotion is kept in the model history beside them (`gridwatch models list`)
    promoted = json.loads((trained["weights"] / "gridwatch.json").read_text())["model_version"]
    assert (trained["weights"] / "history" / promoted / "gridwatch-int8.onnx").is_file()
    for stem in ("gridwatch-fp32", "gridwatch-int8"):  # each model file has the card beside it
        assert (trained["weights"] / f"{stem}.md").read_text() == (trained["weights"] / "gridwatch.md").read_text()
    card = json.loads((trained["weights"] / "gridwatch.json").read_text())
    assert card["classes"][:3] == ["garbage_bin", "bin_overflow", "garbage_pile"]
    sampling = card["training"]["repeat_factor_sampling"]
    assert sampling["train_images"] == 40 and sampling["draws_per_epoch"] > 40
    # push carts are in 8 of 40 train images: sqrt(0.25 / 0.2) = 1.118 each, more than once per epoch
    assert sampling["categories"]["push_cart"]["mean_factor"] == pytest.approx(1.118, abs=0.001)
    assert f"40 train images -> {sampling['draws_per_epoch']} draws per epoch" in trained["out"]
    assert {s["name"] for s in card["sources"]} == {"garbage_overflow_cn", "thela_india", "facade_signs_spb"}
    assert any("CC BY 4.0" in c and "garbage_overflow_cn" in c for c in card["credits"])
    real = card["metrics"]["real_val"]
    assert set(real) == {"gridwatch-fp32.onnx", "gridwatch-int8.onnx"}
    assert {"garbage_bin", "push_cart", "shop_sign"} <= set(real["gridwatch-fp32.onnx"]["classes"])
    assert card["int8"]["calibration_images"] >= 32 and card["speed"]["int8_ms"] > 0
    assert "concats share one scale" in card["int8"]["calibration"]  # training/export/qdq.py ran
    for f in card["files"]:
        assert f["sha256"] == sha256_file(trained["weights"] / f["name"])
    # a build split by image: held out by place over train and val; the served file against both teachers
    assert card["place_folds"]["split"] == "image"
    real_val = [p for p in Path(env["data"]).parent.glob("images/val/*") if "synthetic" not in p.name]
    held_out = card["place_folds"]["held_out"]
    assert held_out["images"] + held_out["seen_place_images"] == len(real_val) > 0
    tiled = card["place_folds"]["tiled"]  # the served int8 file, tiled, on the same held-out images
    assert tiled["model"] == "gridwatch-int8.onnx" and tiled["images"] == held_out["images"]
    assert card["teacher_check"]["model"] == "gridwatch-int8.onnx" and len(card["teacher_check"]["counts"]) == 2
    md = (trained["weights"] / "gridwatch.md").read_text()
    assert "garbage_overflow_cn" in md and "CC BY 4.0" in md and "Known weaknesses" in md
    assert "## Held out by place" in md and "## Against the COCO teacher" in md
    assert any((run / n).is_file() for n in ("results.png", "labels.jpg"))  # plots drew with a local font
    no_network(env)


def test_eval_the_shipped_onnx_files(env, trained):
    for name in ("gridwatch-fp32.onnx", "gridwatch-int8.onnx"):
        proc = gridwatch(env, "eval", "--model", trained["weights"] / name, "--data", env["data"], "--json",
                         "--plots", env["tmp"] / f"plots-{name}")
        out = json.loads(proc.stdout)
        assert set(out) == {"classes", "map50", "map50_95", "split"} and out["split"] == "val"
        assert {"garbage_bin", "push_cart"} <= set(out["classes"])
        for m in out["classes"].values():
            assert m["instances"] > 0
            assert all(0 <= m[k] <= 1 for k in ("ap50", "ap50_95", "precision", "recall"))
        assert (env["tmp"] / f"plots-{name}" / "confusion_matrix.png").is_file()
    text = gridwatch(env, "eval", "--model", trained["weights"] / "gridwatch-int8.onnx", "--data", env["data"]).stdout
    assert "AP50" in text and "garbage_bin" in text
    no_network(env)


def test_export_command_and_outputs_are_not_degenerate(env, trained):
    out = env["tmp"] / "exported"
    proc = gridwatch(env, "export", "--weights", trained["run"] / "weights" / "best.pt", "--out", out,
                     "--calib", env["data"].parent / "images" / "train", "--version", "ci-1")
    assert "int8:" in proc.stdout and "version: ci-1" in proc.stdout
    import cv2
    import onnx

    from detector import Detector
    from detector.model import LEVEL_CLASSES
    from training.export.export import cut_at_head_levels

    frame = cv2.imread(str(next((env["data"].parent / "images" / "val").iterdir())))
    # The int8 file ends at the head's levels; the fp32 graph cut there too gives like for like.
    proto = onnx.load(str(out / "gridwatch-fp32.onnx"))
    cut_at_head_levels(proto)
    onnx.save(proto, str(out / "fp32-levels.onnx"))
    heads = []
    for name in ("fp32-levels.onnx", "gridwatch-int8.onnx"):
        detector = Detector(out / name)
        outputs = detector.session.run(None, {detector.info.input_name: detector.session_input([frame])})
        assert all(np.isfinite(o).all() for o in outputs)
        logits = dict(zip([o.name for o in detector.session.get_outputs()], outputs))[LEVEL_CLASSES.format(0)]
        assert np.ptp(logits) > 1  # class scores are not all quantised to one value
        heads.append(np.concatenate([o.ravel() for o in outputs]))
    # the int8 head follows the fp32 one (box distributions and class logits together)
    assert np.corrcoef(heads[0], heads[1])[0, 1] > 0.9
    _seven_bit_weights_and_narrowing(out, env["data"].parent / "images" / "train")
    no_network(env)


def _seven_bit_weights_and_narrowing(out: Path, train_images: Path) -> None:
    """The export's int8 weights are 7-bit (within +-64: no x86 int8 kernel overflows them), and an
    8-bit file of the same model narrowed from its fp32 file (training.export.qdq.narrow_weights) is
    that export again, to one step of rounding, its calibration untouched."""
    import onnx

    from detector.model import WEIGHT_BITS_KEY
    from tests.support.onnx_graph import initializers, widest_weight
    from training.export.export import calibration_images, quantize_int8
    from training.export.qdq import narrow_weights

    seven = onnx.load(str(out / "gridwatch-int8.onnx"))
    exported = initializers(seven)
    meta = {p.key: p.value for p in seven.metadata_props}
    assert meta[WEIGHT_BITS_KEY] == "7" and widest_weight(exported) == 64
    fp32 = out / "gridwatch-fp32.onnx"
    quantize_int8(fp32, out / "int8-8bit.onnx", calibration_images(train_images, 64), {}, weight_bits=8)
    eight = onnx.load(str(out / "int8-8bit.onnx"))
    assert widest_weight(initializers(eight)) == 127
    assert narrow_weights(eight, onnx.load(str(fp32))) == sum(k.endswith(".weight_quantized") for k in exported)
    narrowed = initializers(eight)
    said = {p.key: p.value for p in eight.metadata_props}
    assert said[WEIGHT_BITS_KEY] == "7" and said["gridwatch_calibration"].endswith("narrowed to 7 bits (+-64) from the fp32 file")
    assert narrowed.keys() == exported.keys()
    for name, value in exported.items():
        if name.endswith(("weight_quantized", "bias_quantized")):
            assert np.abs(narrowed[name].astype(np.int64) - value.astype(np.int64)).max() <= 1, name
        else:  # scales (weights' to float rounding) and the activations' calibration
            assert np.allclose(narrowed[name], value, rtol=1e-6, atol=0), name


def test_second_run_meets_the_champion(env, trained):
    proc = gridwatch(env, "train", "--data", env["data"], "--model", trained["run"] / "weights" / "best.pt",
                     "--epochs", 1, "--imgsz", 192, "--batch", 8, "--project", env["tmp"] / "runs",
                     "--name", "ci2", "--no-int8", "--no-plots", "--weights-dir", trained["weights"],
                     "--cache", "ram", "--close-mosaic", "1", "--optimizer", "SGD", "--lr0", "0.002", "--warmup-epochs", 0.5,
                     "--activation", "relu", "--distill", trained["run"] / "weights" / "best.pt")
    out = proc.stdout + proc.stderr
    import onnx
    import torch

    from training.export.export import load_checkpoint, read_checkpoint_args

    run = env["tmp"] / "runs" / "ci2"
    args = read_checkpoint_args(run / "weights" / "best.pt")
    assert args["close_mosaic"] == 1 and args["cache"] == "ram"  # the flags reach Ultralytics
    assert args["optimizer"] == "SGD" and args["lr0"] == 0.002 and args["warmup_epochs"] == 0.5
    # the SiLU first run taught its ReLU conversion, and the teacher is not shipped inside the student
    assert args["distill_model"] == str((trained["run"] / "weights" / "best.pt").resolve())
    assert "train/dis_loss" in (run / "results.csv").read_text().splitlines()[0]
    # --activation survives Ultralytics rebuilding the network from its yaml, and the export
    trained_model = load_checkpoint(run / "weights" / "best.pt")["model"]
    assert type(trained_model).__name__ == "DetectionModel"
    assert not any(isinstance(m, torch.nn.SiLU) for m in trained_model.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in trained_model.modules())
    ops = [n.op_type for n in onnx.load(str(run / "export" / "gridwatch-fp32.onnx")).graph.node]
    assert ops.count("Relu") > 50 and ops.count("Sigmoid") <= 1  # the class scores' sigmoid only
    # `gridwatch retrain` rebuilds a shipped ReLU model with ReLU: its head matches the ONNX file's
    from detector.model import open_session
    from training.fit.bootstrap import rebuild

    rebuilt = rebuild(run / "export" / "gridwatch-fp32.onnx")
    assert not any(isinstance(m, torch.nn.SiLU) for m in rebuilt.modules())
    session, info = open_session(run / "export" / "gridwatch-fp32.onnx")
    x = np.random.default_rng(0).random((1, 3, 192, 192), dtype=np.float32)
    (expected,) = session.run(None, {info.input_name: x})
    with torch.no_grad():
        head = rebuilt(torch.from_numpy(x))
    head = (head[0] if isinstance(head, (list, tuple)) else head).numpy()
    assert np.abs(head[:, :4] - expected[:, :4]).max() < 0.05 and np.abs(head[:, 4:] - expected[:, 4:]).max() < 1e-4
    line = next(l for l in out.splitlines() if "champion/challenger" in l)
    assert "champion none" not in line  # the promoted first model was scored on the same split
    assert "not promoted" in out  # no --promote: weights/ untouched
    no_network(env)


def test_finished_run_cannot_resume_but_can_finish_again(env, trained):
    proc = gridwatch(env, "train", "--resume", "--project", env["tmp"] / "runs", "--name", "ci", check=False)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr
    proc = gridwatch(env, "train", "--finish", "--project", env["tmp"] / "runs", "--name", "ci", "--no-int8",
                     "--weights-dir", trained["weights"])
    assert "champion/challenger" in proc.stdout and "not promoted" in proc.stdout
    no_network(env)


def test_average_finishes_with_its_lineage_and_notes_in_the_card(env, trained):
    runs = env["tmp"] / "runs"
    gridwatch(env, "average", "--weights", runs / "ci" / "weights" / "best.pt", runs / "ci" / "weights" / "last.pt",
              "--shares", "1", "3", "--project", runs, "--name", "soup")
    notes = env["tmp"] / "notes.md"
    notes.write_text("Averaged because **both** runs were close.\n", encoding="utf-8")
    gridwatch(env, "train", "--finish", "--project", runs, "--name", "soup", "--no-int8",
              "--card-notes", notes, "--weights-dir", trained["weights"], "--imgsz", 224)
    card = json.loads((runs / "soup" / "export" / "gridwatch.json").read_text(encoding="utf-8"))
    assert card["summary"] == "Averaged because **both** runs were close."
    assert (card["imgsz"], card["train_imgsz"]) == (224, 192)  # exported for another input size
    assert card["training"]["average_shares"] == [1.0, 3.0]
    assert [Path(w).parent.parent.name for w in card["training"]["averaged_from"]] == ["ci", "ci"]
    md = (runs / "soup" / "export" / "gridwatch.md").read_text(encoding="utf-8")
    assert "Averaged because **both**" in md and "Input 224 px (trained at 192 px)" in md
    missing = gridwatch(env, "train", "--finish", "--project", runs, "--name", "soup",
                        "--card-notes", env["tmp"] / "nope.md", check=False)
    assert missing.returncode == 2 and "--card-notes" in missing.stderr
    no_network(env)


def test_resume_an_interrupted_run(env, trained):  # trained: the cached bootstrap start
    project = env["tmp"] / "runs"
    args = [sys.executable, "-m", "serving.cli", "train", "--data", str(env["data"]), "--epochs", "3",
            "--imgsz", "160", "--batch", "8", "--project", str(project), "--name", "interrupted", "--no-plots",
            "--no-int8", "--model", str(project / ".bootstrap" / "yolov8n-coco-bootstrap.pt")]
    proc = subprocess.Popen(args, env=env["env"], cwd=env["tmp"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    results = project / "interrupted" / "results.csv"
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 2:  # epoch 1 saved
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    _wait_for_checkpoint(project / "interrupted" / "weights" / "last.pt", deadline, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _epochs(results)
    assert 1 <= len(before) < 3
    gridwatch(env, "train", "--resume", "--project", project, "--name", "interrupted", "--no-int8")
    after = _epochs(results)
    assert after[-1] == 3  # reached the planned epochs
    # continued from the last saved epoch instead of starting over (an epoch whose row was
    # written but whose last.pt was not yet saved when killed is trained again)
    assert after[: len(before)] == before and len(after) - len(before) <= 3 - before[0]
    assert (project / "interrupted" / "weights" / "best.pt").is_file()
    no_network(env)


def _wait_for_checkpoint(path: Path, deadline: float, proc: subprocess.Popen) -> None:
    """Until the epoch's last.pt is written whole (its size holds for a moment): Ultralytics
    writes the csv row before the checkpoint, and on a busy machine the gap is seconds."""
    size = -1
    while time.time() < deadline and proc.poll() is None:
        now = path.stat().st_size if path.is_file() else -1
        if now > 0 and now == size:
            return
        size = now
        time.sleep(0.5)


def _epochs(results: Path) -> list[int]:
    rows = results.read_text().splitlines()[1:]
    return [int(float(r.split(",")[0])) for r in rows if r.strip()]


def _weights(path: Path) -> dict:
    from training.export.export import load_checkpoint

    checkpoint = load_checkpoint(path)
    model = checkpoint.get("ema") or checkpoint["model"]
    return {"names": dict(model.names), "state": model.float().state_dict()}


def test_class_refit_learns_only_the_named_classes_score_rows(env, trained):
    import torch

    start = trained["run"] / "weights" / "best.pt"
    project = env["tmp"] / "runs"
    base_int8 = trained["run"] / "export" / "gridwatch-int8.onnx"
    proc = gridwatch(env, "train", "--data", env["data"], "--model", start, "--refit-classes", "person,truck",
                     "--epochs", 1, "--imgsz", 192, "--batch", 8, "--optimizer", "SGD", "--lr0", 0.05,
                     "--warmup-epochs", 0, "--project", project, "--name", "refit", "--no-plots",
                     "--int8-from", base_int8, "--weights-dir", trained["weights"])
    assert "class refit: only the score rows of person, truck learn" in proc.stdout + proc.stderr
    before, after = _weights(start), _weights(project / "refit" / "weights" / "best.pt")
    taught = torch.tensor([before["names"][k] in ("person", "truck") for k in sorted(before["names"])])
    score_rows = {f"model.22.cv3.{level}.2.{part}" for level in range(3) for part in ("weight", "bias")}
    moved = False
    for key, value in before["state"].items():
        learnt = after["state"][key]
        if key in score_rows:
            assert torch.equal(learnt[~taught], value[~taught]), f"{key}: a row of an untaught class moved"
            moved |= not torch.equal(learnt[taught], value[taught])
        else:
            assert torch.equal(learnt, value), f"{key} moved in a class refit"
    assert moved, "the taught classes' score rows did not learn"
    card = json.loads((project / "refit" / "export" / "gridwatch.json").read_text(encoding="utf-8"))
    assert card["training"]["class_refit"] == ["person", "truck"]
    assert "score rows of person, truck grafted" in card["int8"]["calibration"]
    assert_int8_differs_only_in_rows(base_int8, project / "refit" / "export" / "gridwatch-int8.onnx", taught.numpy())

    unknown = gridwatch(env, "train", "--data", env["data"], "--model", start, "--refit-classes", "lorry",
                        "--epochs", 1, "--project", project, "--name", "refit-unknown", check=False)
    assert unknown.returncode == 2 and "lorry not a detector class" in unknown.stderr
    assert not (project / "refit-unknown").exists()
    no_network(env)
