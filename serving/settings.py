"""The one settings object: loaded once at start-up (defaults < YAML file < environment) and passed down.

No other module reads environment variables.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from detector.files import REPO_ROOT, validation_problems
from detector.runtime import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD
from serving.cameras.schedules import known_time_zone
from serving.web.hotkeys import check_hotkeys

if TYPE_CHECKING:
    from detector.runtime import Detector

log = logging.getLogger(__name__)

WEIGHTS_DIR = REPO_ROOT / "weights"
# Peak memory of decoding one image, per pixel of the original: OpenCV holds the decoded
# frame and a converted copy (measured 6.15 B/px for 7000x7000 PNG, WebP, BMP and JPEG at
# full size; reduced JPEG decoding takes far less). Used to fit the pixel limit to a budget.
DECODE_PEAK_BYTES_PER_PIXEL = 6.5
# The shipped default model: served as int8, its fp32 twin and model card beside it.
DEFAULT_MODEL_NAME = "gridwatch-int8.onnx"


class SettingsError(ValueError):
    """A settings file or variable is malformed; the message names the field."""


def default_model_path() -> Path | None:
    candidate = WEIGHTS_DIR / DEFAULT_MODEL_NAME
    return candidate if candidate.is_file() else None


class LabellingSettings(BaseModel):
    """Active learning (serving/pipeline/uncertainty.py): unsure frames into the labelling queue."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    daily_budget_per_camera: int = Field(20, ge=0)  # frames per camera per local day (0: none)
    band: float = Field(0.1, ge=0, le=1)  # a top score this close to a rule's min_score is unsure
    min_gap_s: float = Field(300.0, ge=0)  # camera time between two samples of one camera
    timezone: str = "Asia/Shanghai"  # where a camera's day starts and ends

    _known_zone = field_validator("timezone")(known_time_zone)

class RecheckSettings(BaseModel):
    """Step 6 of the case loop (核查): after the case system reports a case handled, the
    camera looks again (serving/cases/recheck.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    # Seconds after the handled report; then postponed into the camera's next schedule window.
    delay_s: float = Field(600.0, ge=0)
    # A detection of the rule's classes at or above the rule's score that overlaps the case's
    # box by this IoU means the violation is still there.
    min_iou: float = Field(0.1, gt=0, le=1)
    # A live camera's frame taken by the running pipeline within this many seconds is used;
    # otherwise the source is opened once for a fresh one.
    frame_timeout_s: float = Field(20.0, gt=0)
    # A look that fails (camera offline, unreadable frame) is tried again this much later,
    # up to max_tries, then the re-check is marked failed for a person to do it.
    retry_s: float = Field(300.0, gt=0)
    max_tries: int = Field(6, ge=1)
    poll_s: float = Field(5.0, gt=0)


class ThresholdSettings(BaseModel):
    """Per camera x violation thresholds fitted to reviewed precision (serving/cases/thresholds.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    # The alert threshold is the lowest reviewed score at which precision holds this...
    target_precision: float = Field(0.90, gt=0, le=1)
    # ...and the auto-confirm threshold (cases sent without a reviewer) holds a stricter one.
    auto_confirm_precision: float = Field(0.97, gt=0, le=1)
    min_reviews: int = Field(20, ge=1)  # decisions of one camera x violation before it moves
    window: int = Field(500, ge=1)  # the most recent decisions considered
    floor: float = Field(0.25, ge=0, le=1)
    ceiling: float = Field(0.95, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdSettings:
        if self.floor > self.ceiling:
            raise ValueError(f"thresholds.floor ({self.floor}) is above thresholds.ceiling ({self.ceiling})")
        return self


class PrivacySettings(BaseModel):
    """People are not the violation (serving/privacy.py): in every copy that leaves the
    service, the boxes of these classes are pixelated; the original stays sealed."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mask: bool = True
    classes: list[str] = Field(default_factory=lambda: ["person"])
    # Violations for which a person must stay visible (e.g. a city's street_stall rule names
    # the vendor): their copies are not masked.
    keep_visible: list[str] = Field(default_factory=list)
    min_score: float = Field(0.25, ge=0, le=1)  # a person found at this score or above is masked


class RetentionSettings(BaseModel):
    """How long each outcome's evidence is kept (serving/retention.py), in days after the
    case's last sighting or decision; an outcome not listed is kept."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    keep_days: dict[Literal["pending", "confirmed", "corrected", "rejected"], Annotated[float, Field(gt=0)]] = \
        Field(default_factory=dict)
    purge_every_s: float = Field(3600.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDWATCH_", extra="forbid", env_nested_delimiter="__",
                                      allow_inf_nan=False)

    data_dir: Path = Path("gridwatch-data")
    database_url: str | None = None  # default: SQLite file under data_dir
    # PostgreSQL: seconds a connection attempt may take before the `database` fault (0: the
    # system's own, minutes on a host that drops packets); a URL's connect_timeout wins.
    database_connect_timeout_s: float = Field(5.0, ge=0)
    evidence_dir: Path | None = None  # default: data_dir/evidence

    model: Path | None = None  # default: the shipped model in weights/
    taxonomy_file: Path | None = None  # a city's override, merged over the built-in taxonomy
    # The truck load decision trained for this city (`gridwatch second-stage train`, e.g.
    # weights/load-decision.onnx): muck_truck_uncovered then files only open loads. None: every
    # truck goes to review, said at start.
    load_classifier: Path | None = None
    score_threshold: float = Field(DEFAULT_SCORE_THRESHOLD, ge=0, le=1)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0, le=1)
    threads: int | None = Field(None, ge=1)
    # Longest input side for a model exported with free height and width (the shipped one):
    # smaller makes every frame cheaper (384 runs about 0.75 of 448's pixels) at some accuracy
    # on small objects; tiled static checks still look at full resolution. None: the model's own.
    imgsz: int | None = Field(None, ge=32, multiple_of=32)
    # Seconds between looks at the model file: a promoted model goes live without a restart
    # (0: only on POST /v1/models/reload).
    model_watch_s: float = Field(10.0, ge=0)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    admin_key: str | None = None  # GRIDWATCH_ADMIN_KEY: the first admin key, for automation

    cameras_file: Path | None = None
    # Folders a camera added through the API may read files from (recordings, image folders);
    # default: data_dir/media. Config-file cameras may name any path.
    media_roots: list[Path] = Field(default_factory=list)

    # Cluster mode (serving/cluster/): cameras run in camera-worker actors on a Ray cluster,
    # cases stay in this process. GRIDWATCH_RAY_ADDRESS or `serve --cluster ADDRESS` ("auto":
    # the cluster `ray start` made on this machine); unset: one process, as without a cluster.
    ray_address: str | None = None
    cluster_cpus_per_worker: float = Field(1.0, gt=0)  # Ray CPUs each camera worker reserves
    cluster_heartbeat_s: float = Field(1.0, gt=0)
    # A worker silent this long (dead node, hung process, partition) loses its cameras' leases
    # and they start on other workers.
    cluster_lease_timeout_s: float = Field(10.0, gt=0)
    # Events per pull from a worker, the bound of its queue, and the backlog of events the
    # database has not taken at which pulling pauses (back-pressure down to the readers).
    cluster_events_in_flight: int = Field(64, ge=1)
    cluster_max_moves: int = Field(8, ge=0)  # cameras a new worker takes from the loaded ones
    # File sources replayed at this multiple of real time in workers (archived footage
    # standing in for live cameras: tests, `bench --cluster`); unset: as fast as they go.
    cluster_replay_speed: float | None = Field(None, gt=0)

    # Cases (serving/cases/): a new event for the same camera + violation + place joins
    # the open case; after the case ends, re-detections within the cooldown are the same
    # violation; later ones reopen the case or file a new one.
    dedup_cooldown_s: float = Field(600.0, ge=0)
    dedup_min_iou: float = Field(0.1, ge=0, le=1)
    reopen_policy: Literal["reopen", "new"] = "reopen"
    # The event over time: frames a case keeps from its event's life besides its best ones
    # (opened, latest updates, closed), each sealed, masked and chained like other evidence;
    # past this many the oldest update is dropped first (a tombstone in the chain). 0: none.
    timeline_frames: int = Field(6, ge=0, le=50)
    # The code in new case numbers (GW{date}-{instance}-{row}); default: the one drawn at
    # random for this database by its migration, shared by all its processes.
    instance_id: str | None = Field(None, pattern=r"^[A-Z0-9]{1,8}$")
    # What goes out to the case system: confirmed cases, plus unreviewed ones whose score
    # reaches the per-violation auto-confirm score here (e.g. {"bin_overflow": 0.8}).
    auto_confirm: dict[str, float] = Field(default_factory=dict)
    recheck: RecheckSettings = Field(default_factory=RecheckSettings)
    thresholds: ThresholdSettings = Field(default_factory=ThresholdSettings)
    # Events of the service's cameras wait in memory while the database is away or the
    # evidence disk is full (serving/cases/held.py); their frames up to this much, past it
    # the events wait without their frame (marked for review).
    held_frames_max_mb: int = Field(256, ge=0)

    # Evidence integrity (serving/chain.py): the chain head is signed with the instance's
    # Ed25519 key (made on first start; default data_dir/evidence-signing.key) this often and
    # at shutdown; with timestamp_url, each signed head is also time-stamped (RFC 3161).
    evidence_key_file: Path | None = None
    chain_sign_every_s: float = Field(300.0, gt=0)
    timestamp_url: str | None = None
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

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
    # Decisions (first, re-decisions, undos) one person may make in any minute, page and API
    # alike (0: no limit); past it 429. 120 is a decision every half second, sustained.
    review_max_per_min: int = Field(120, ge=0)
    # How long after it was sent a decision can still be undone from the page's undo stack
    # (the last 10 of the session); later, re-decide with a reason.
    review_undo_window_s: float = Field(300.0, ge=0)
    # Re-mapped review page keys, action -> key (serving/web/hotkeys.py lists the actions).
    review_hotkeys: dict[str, str] = Field(default_factory=dict)
    _hotkeys = field_validator("review_hotkeys")(check_hotkeys)
    labelling: LabellingSettings = Field(default_factory=LabellingSettings)

    # API uploads (POST /v1/detect, /v1/events): checked before decoding, against decompression bombs.
    upload_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    # Any other request body (JSON): keys, reviews, camera configs are a few KB.
    json_max_bytes: int = Field(1024 * 1024, ge=1024)
    # Multipart requests in flight at once; the next gets 503 + Retry-After. Each may hold
    # upload_max_bytes in memory while it is checked.
    max_concurrent_uploads: int = Field(8, ge=1)
    # Per API key, on /v1/detect and /v1/events: a burst, then this many a minute (0: no limit);
    # past it 429 with Retry-After. 600/min is 10 frames a second per camera box.
    rate_limit_per_minute: int = Field(600, ge=0)
    rate_limit_burst: int = Field(60, ge=1)
    # A request's whole body must arrive within this; one that stalls or trickles gets 408
    # and frees its upload slot (serving/api/guard.py).
    body_timeout_s: float = Field(60.0, gt=0)
    # Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For is believed; from
    # anyone else the connection's own address counts (login limits are per address).
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") from None
        return value
    # Decoding memory: at most max_concurrent_decodes images decode at once, each taking up
    # to DECODE_PEAK_BYTES_PER_PIXEL x its pixels; the pixel limit must keep that within the
    # budget (checked at start). Defaults: 2 x 40 Mpx x 6.5 B = 496 MiB <= 512 MiB.
    upload_max_pixels: int = Field(40_000_000, ge=1)
    max_concurrent_decodes: int = Field(2, ge=1)
    decode_memory_budget_mb: int = Field(512, ge=16)

    @model_validator(mode="after")
    def _decodes_fit_the_budget(self) -> Settings:
        worst = self.max_concurrent_decodes * self.upload_max_pixels * DECODE_PEAK_BYTES_PER_PIXEL
        if worst > self.decode_memory_budget_mb * 2**20:
            raise ValueError(
                f"max_concurrent_decodes x upload_max_pixels x {DECODE_PEAK_BYTES_PER_PIXEL} bytes = "
                f"{worst / 2**20:.0f} MiB is over decode_memory_budget_mb ({self.decode_memory_budget_mb}): "
                "lower the pixel limit or the concurrency, or raise the budget")
        return self

    def resolved_model(self) -> Path:
        model = self.model or default_model_path()
        if model is None:
            raise SettingsError(
                f"no model given and none shipped in {WEIGHTS_DIR}: pass --model PATH.onnx "
                "(e.g. ../shared/weights/coco-yolov8n-int8.onnx) or train one with `gridwatch train`"
            )
        return model

    @property
    def database_file(self) -> Path | None:
        """The SQLite file the service keeps its cases in by default; None with a database_url."""
        return None if self.database_url else (self.data_dir / "gridwatch.db").resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.database_file}"

    @property
    def resolved_media_roots(self) -> tuple[Path, ...]:
        return tuple(self.media_roots) or (self.data_dir / "media",)

    @property
    def resolved_evidence_dir(self) -> Path:
        return self.evidence_dir or self.data_dir / "evidence"

    @property
    def resolved_evidence_key(self) -> Path:
        return self.evidence_key_file or self.data_dir / "evidence-signing.key"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the YAML file's `settings:` section (or its top level), then the
    environment, then explicit overrides (command-line flags)."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise SettingsError(f"{path}: cannot read settings: {exc}") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: expected a mapping at the top level")
        file_values = data.get("settings", {}) if "settings" in data or "cameras" in data else data
        if not isinstance(file_values, dict):
            raise SettingsError(f"{path}: 'settings' must be a mapping")
    try:
        from_env = Settings()
        explicit = {k: v for k, v in overrides.items() if v is not None}
        merged = _deep_merge(_deep_merge(file_values, from_env.model_dump(exclude_unset=True)), explicit)
        return Settings.model_validate(merged) if merged else from_env
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {validation_problems(exc)}") from None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on `base`; nested groups (recheck, thresholds, labelling) merge key by key, so an
    environment variable for one key keeps the file's others."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def load_detector(settings: Settings, model: Path | None = None, **options: Any) -> Detector:
    """The detector these settings describe (model, thresholds, threads), or another model
    file with the same settings; `options` go to `Detector` as they are (e.g.
    spinning=False for benchmarks)."""
    from detector.model import int8_overflow
    from detector.runtime import Detector
    from detector.second_stage import CropClassifier

    if settings.load_classifier is not None and "second_stage" not in options:
        options["second_stage"] = [CropClassifier(settings.load_classifier, threads=settings.threads)]
    detector = Detector(model or settings.resolved_model(), score_threshold=settings.score_threshold,
                        iou_threshold=settings.iou_threshold, threads=settings.threads, imgsz=settings.imgsz,
                        **options)
    if overflow := int8_overflow(detector.info):
        log.warning("%s", overflow)
    return detector
