"""The one settings object: loaded once at start-up (defaults < YAML file < environment) and passed down.

No other module reads environment variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from detector.files import REPO_ROOT, validation_problems
from detector.runtime import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD

if TYPE_CHECKING:
    from detector.runtime import Detector

WEIGHTS_DIR = REPO_ROOT / "weights"
# The shipped default model: served as int8, its fp32 twin and model card beside it.
DEFAULT_MODEL_NAME = "gridwatch-int8.onnx"


class SettingsError(ValueError):
    """A settings file or variable is malformed; the message names the field."""


def default_model_path() -> Path | None:
    candidate = WEIGHTS_DIR / DEFAULT_MODEL_NAME
    return candidate if candidate.is_file() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDWATCH_", extra="forbid", env_nested_delimiter="__")

    data_dir: Path = Path("gridwatch-data")
    database_url: str | None = None  # default: SQLite file under data_dir
    evidence_dir: Path | None = None  # default: data_dir/evidence

    model: Path | None = None  # default: the shipped model in weights/
    taxonomy_file: Path | None = None  # a city's override, merged over the built-in taxonomy
    score_threshold: float = Field(DEFAULT_SCORE_THRESHOLD, ge=0, le=1)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0, le=1)
    threads: int | None = Field(None, ge=1)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    admin_key: str | None = None  # GRIDWATCH_ADMIN_KEY: the first admin key, for automation

    cameras_file: Path | None = None

    # Cases (serving/cases/): a new event for the same camera + violation + place joins
    # the open case; after the case ends, re-detections within the cooldown are the same
    # violation; later ones reopen the case or file a new one.
    dedup_cooldown_s: float = Field(600.0, ge=0)
    dedup_min_iou: float = Field(0.1, ge=0, le=1)
    reopen_policy: Literal["reopen", "new"] = "reopen"
    # What goes out to the case system: confirmed cases, plus unreviewed ones whose score
    # reaches the per-violation auto-confirm score here (e.g. {"bin_overflow": 0.8}).
    auto_confirm: dict[str, float] = Field(default_factory=dict)

    # Delivery (serving/delivery.py): a signed JSON webhook per case version.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    public_url: str | None = None  # base of evidence URLs in payloads; default http://host:port
    # 20 tries, 2 s doubling to a 15 min cap: about 3 hours of case-system outage before a
    # message is dead-lettered (then `gridwatch cases replay`).
    delivery_max_tries: int = Field(20, ge=1)
    delivery_backoff_s: float = Field(2.0, gt=0)
    delivery_backoff_max_s: float = Field(900.0, gt=0)
    delivery_timeout_s: float = Field(10.0, gt=0)
    delivery_poll_s: float = Field(1.0, gt=0)

    # The review page (serving/web/): signed-in sessions, login throttling, case leases,
    # and how long a decision can be taken back before it is sent.
    session_ttl_s: float = Field(8 * 3600.0, gt=0)
    login_max_failures: int = Field(5, ge=1)  # per user and per address, then 429 until the window passes
    login_window_s: float = Field(300.0, gt=0)
    review_lease_s: float = Field(120.0, gt=0)
    review_undo_s: float = Field(4.0, ge=0)

    # API uploads (POST /v1/detect): checked before decoding, against decompression bombs.
    upload_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    upload_max_pixels: int = Field(50_000_000, ge=1)

    def resolved_model(self) -> Path:
        model = self.model or default_model_path()
        if model is None:
            raise SettingsError(
                f"no model given and none shipped in {WEIGHTS_DIR}: pass --model PATH.onnx "
                "(e.g. ../shared/weights/coco-yolov8n-int8.onnx) or train one with `gridwatch train`"
            )
        return model

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gridwatch.db').resolve()}"

    @property
    def resolved_evidence_dir(self) -> Path:
        return self.evidence_dir or self.data_dir / "evidence"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the YAML file's `settings:` section (or its top level), then the
    environment, then explicit overrides (command-line flags)."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{path}: cannot read settings: {exc}") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: expected a mapping at the top level")
        file_values = data.get("settings", {}) if "settings" in data or "cameras" in data else data
        if not isinstance(file_values, dict):
            raise SettingsError(f"{path}: 'settings' must be a mapping")
    try:
        from_env = Settings()
        explicit = {k: v for k, v in overrides.items() if v is not None}
        merged = {**file_values, **from_env.model_dump(exclude_unset=True), **explicit}
        return Settings.model_validate(merged) if merged else from_env
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {validation_problems(exc)}") from None


def load_detector(settings: Settings, **options: Any) -> Detector:
    """The detector these settings describe (model, thresholds, threads); `options` go to
    `Detector` as they are (e.g. spinning=False for benchmarks)."""
    from detector.runtime import Detector

    return Detector(settings.resolved_model(), score_threshold=settings.score_threshold,
                    iou_threshold=settings.iou_threshold, threads=settings.threads, **options)
