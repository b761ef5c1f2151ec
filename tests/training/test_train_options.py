"""`gridwatch train`'s pass-through options reach Ultralytics under its own names, and only those given."""

from serving.cli import build_parser
from training.commands import ultralytics_options


def test_given_options_reach_ultralytics_under_its_names(tmp_path):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    args = build_parser().parse_args([
        "train", "--data", "d.yaml", "--time", "0.135", "--warmup-epochs", "1", "--close-mosaic", "5",
        "--cache", "ram", "--optimizer", "SGD", "--lr0", "0.01", "--distill", str(teacher), "--freeze", "10"])
    assert ultralytics_options(args) == {
        "cache": "ram", "close_mosaic": 5, "time": 0.135, "warmup_epochs": 1.0, "optimizer": "SGD", "lr0": 0.01,
        "freeze": 10, "distill_model": str(teacher.resolve())}


def test_options_not_given_are_left_to_ultralytics():
    assert ultralytics_options(build_parser().parse_args(["train", "--data", "d.yaml"])) == {"optimizer": "auto"}
