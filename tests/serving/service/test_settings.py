"""The one settings object: defaults, YAML file, environment, flags, and clear errors."""

from pathlib import Path

import pytest

from serving import settings as settings_module
from serving.settings import SettingsError, load_settings


def test_precedence_defaults_file_env_flags(tmp_path: Path, monkeypatch):
    config = tmp_path / "gridwatch.yaml"
    config.write_text("settings:\n  port: 9001\n  score_threshold: 0.3\n  data_dir: /srv/gw\n", encoding="utf-8")
    monkeypatch.setenv("GRIDWATCH_SCORE_THRESHOLD", "0.35")
    s = load_settings(config, port=9100)
    assert s.port == 9100  # flag beats file
    assert s.score_threshold == 0.35  # environment beats file
    assert s.data_dir == Path("/srv/gw")  # file beats default
    assert s.resolved_database_url == "sqlite:////srv/gw/gridwatch.db"
    assert s.resolved_evidence_dir == Path("/srv/gw/evidence")


def test_malformed_settings_name_the_field(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("settings:\n  port: not-a-port\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="port"):
        load_settings(config)
    config.write_text("settings:\n  colour: red\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="colour"):
        load_settings(config)
    config.write_text("[unclosed", encoding="utf-8")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(config)


def test_missing_model_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(settings_module, "default_model_path", lambda: None)
    with pytest.raises(SettingsError, match="--model"):
        load_settings().resolved_model()


def test_grouped_settings_merge_key_by_key(tmp_path: Path, monkeypatch):
    config = tmp_path / "gridwatch.yaml"
    config.write_text("settings:\n  recheck: {min_iou: 0.2, delay_s: 60}\n  thresholds: {target_precision: 0.85}\n",
                      encoding="utf-8")
    monkeypatch.setenv("GRIDWATCH_RECHECK__DELAY_S", "900")
    s = load_settings(config)
    assert (s.recheck.delay_s, s.recheck.min_iou, s.recheck.max_tries) == (900, 0.2, 6)  # env, file, default
    assert (s.thresholds.target_precision, s.thresholds.auto_confirm_precision) == (0.85, 0.97)
    config.write_text("settings:\n  thresholds: {floor: 0.8, ceiling: 0.5}\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="floor"):
        load_settings(config)
    config.write_text("settings:\n  recheck: {delay: 5}\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="delay"):
        load_settings(config)


def test_imgsz_runs_the_shipped_model_smaller_and_a_fixed_model_refuses(tmp_path: Path, monkeypatch):
    import numpy as np

    from detector import ModelLoadError
    from serving.settings import load_detector
    from tests.support.shared_data import COCO_INT8

    monkeypatch.setenv("GRIDWATCH_IMGSZ", "384")
    detector = load_detector(load_settings())
    assert detector.input_size == (384, 384)
    assert detector.input_plan(np.zeros((1080, 1920, 3), np.uint8))[0] == (224, 384)
    with pytest.raises(ModelLoadError, match="fixed 640x640 input"):
        load_detector(load_settings(model=COCO_INT8))
    monkeypatch.setenv("GRIDWATCH_IMGSZ", "400")
    with pytest.raises(SettingsError, match="imgsz"):
        load_settings()


def test_an_8_bit_int8_model_on_a_cpu_without_vnni_is_named_at_load(tmp_path, monkeypatch, caplog):
    """An int8 file from before 7-bit weights (training.export.qdq.WEIGHT_BITS) computes wrong on an
    x86 CPU without VNNI: loading it says so, once, with what to do; on a VNNI CPU, or with the
    shipped 7-bit file, nothing is said."""
    import logging

    import onnx

    import detector.model as model
    from detector.model import WEIGHT_BITS_KEY
    from serving.settings import WEIGHTS_DIR, load_detector

    proto = onnx.load(str(WEIGHTS_DIR / "gridwatch-int8.onnx"))
    kept = [p for p in proto.metadata_props if p.key != WEIGHT_BITS_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    older = tmp_path / "gridwatch-int8.onnx"
    onnx.save(proto, str(older))

    def loaded(flags: set[str], path) -> list[str]:
        monkeypatch.setattr(model, "cpu_flags", lambda: frozenset(flags))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="serving.settings"):
            load_detector(load_settings(model=path))
        return [r.getMessage() for r in caplog.records if r.name == "serving.settings"]

    warned = loaded({"sse4_2", "avx2"}, older)
    assert len(warned) == 1 and "8-bit int8 weights and this CPU has no VNNI" in warned[0]
    assert "gridwatch-int8.onnx" in warned[0] and "fp32 file" in warned[0]
    assert loaded({"avx2", "avx512_vnni"}, older) == []
    assert loaded({"avx2", "avx_vnni"}, older) == []
    assert loaded({"asimd", "asimddp"}, older) == []  # not x86
    assert loaded({"sse4_2", "avx2"}, WEIGHTS_DIR / "gridwatch-int8.onnx") == []
    assert loaded({"sse4_2", "avx2"}, WEIGHTS_DIR / "gridwatch-fp32.onnx") == []
