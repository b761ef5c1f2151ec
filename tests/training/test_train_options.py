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


def test_class_refit_is_refused_beside_options_that_train_other_weights(capsys):
    from training.commands import run_train

    for extra in (["--freeze", "10"], ["--activation", "relu"]):
        args = build_parser().parse_args(["train", "--data", "d.yaml", "--refit-classes", "truck", *extra])
        assert run_train(args) == 2
        assert "--refit-classes trains the score rows alone" in capsys.readouterr().err
    args = build_parser().parse_args(["train", "--data", "d.yaml", "--refit-classes", " , "])
    assert run_train(args) == 2
    assert "needs at least one class name" in capsys.readouterr().err


def test_unknown_refit_class_is_refused_before_anything_is_built(tmp_path, capsys):
    from training.commands import run_retrain, run_train

    runs = tmp_path / "runs"
    for argv, run in ((["train", "--data", "d.yaml"], run_train),
                      (["retrain", "--review", str(tmp_path), "--project", str(runs)], run_retrain)):
        assert run(build_parser().parse_args([*argv, "--refit-classes", "truck,lorry"])) == 2
        err = capsys.readouterr().err
        assert "--refit-classes: lorry not a detector class" in err and "truck," in err
    assert not runs.exists()


def test_refit_class_the_dataset_lacks_is_refused_before_training(tmp_path, capsys):
    from training.commands import run_train

    # a city's own dataset with fewer classes than the taxonomy: truck is a detector class, not one of its own
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames:\n  0: garbage_bin\n  1: push_cart\n")
    runs = tmp_path / "runs"
    args = build_parser().parse_args(["train", "--data", str(data), "--model", str(tmp_path / "start.pt"),
                                      "--refit-classes", "push_cart,truck", "--project", str(runs)])
    assert run_train(args) == 2
    err = capsys.readouterr().err
    assert "--refit-classes: truck not among the dataset's classes (garbage_bin, push_cart)" in err
    assert not runs.exists()
