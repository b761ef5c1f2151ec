"""Make Ultralytics run with no network at all.

Call `prepare()` before the first `import ultralytics` anywhere in the process.
How Ultralytics 8.4 would otherwise reach out, and what stops each one:

- `utils.ONLINE` is computed at import by DNS look-ups (`is_online`); it gates
  telemetry (`utils.events`), pip auto-update and hub checks. `YOLO_OFFLINE=1`
  makes it False without touching the network.
- `check_det_dataset` ends with `check_font("Arial.ttf")`, and the plotting
  Annotator calls `check_font` too: a font not found in `YOLO_CONFIG_DIR` or
  matplotlib's font list is fetched from GitHub (an HTTP HEAD first even when
  offline). We point `YOLO_CONFIG_DIR` at our own folder and put a local font
  there under the names Ultralytics asks for (matplotlib's bundled DejaVu Sans;
  Noto CJK from Debian for the Unicode one when installed).
- `check_amp` on CUDA downloads yolo26n.pt to compare fp32 and AMP outputs. We
  replace it in the trainer with a local answer (AMP on for CUDA, off on CPU,
  as Ultralytics decides for devices it trusts).
- Settings: `sync` (anonymous analytics) and every third-party logger
  integration are switched off in the settings file we own.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

_CJK_CANDIDATES = (
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc"),
)
_INTEGRATIONS_OFF = {
    "sync": False,
    "hub": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "neptune": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
}


def config_dir() -> Path:
    """Where Ultralytics keeps its settings and fonts for gridwatch: one private folder."""
    return Path.home() / ".cache" / "gridwatch" / "ultralytics"


def _install_fonts(directory: Path) -> None:
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    cjk = next((p for p in _CJK_CANDIDATES if p.is_file()), dejavu)
    for name, source in (("Arial.ttf", dejavu), ("Arial.Unicode.ttf", cjk)):
        target = directory / name
        if not target.is_file():
            shutil.copyfile(source, target)


def prepare() -> Path:
    """Environment and fonts for an offline Ultralytics; returns its config folder.

    An existing YOLO_CONFIG_DIR is respected (fonts are added to it). Safe to call repeatedly. If Ultralytics was already imported by someone else,
    YOLO_OFFLINE came too late for `ONLINE`, so we also force the module constants.
    """
    directory = Path(os.environ.get("YOLO_CONFIG_DIR") or config_dir())
    # Ultralytics' USER_CONFIG_DIR is YOLO_CONFIG_DIR/Ultralytics: settings and fonts live there.
    user_dir = directory / "Ultralytics"
    user_dir.mkdir(parents=True, exist_ok=True)
    _install_fonts(user_dir)
    os.environ["YOLO_CONFIG_DIR"] = str(directory)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "True")
    if "ultralytics" in sys.modules:
        _patch_loaded()
    return directory


def _patch_loaded() -> None:
    import ultralytics.utils as uu

    uu.ONLINE = False
    for name in ("ultralytics.utils.checks", "ultralytics.utils.events", "ultralytics.utils.downloads"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "ONLINE"):
            module.ONLINE = False


def _local_check_amp(model) -> bool:
    device = next(model.parameters()).device
    return device.type == "cuda"


def ultralytics_offline():
    """Import Ultralytics with every network path closed; returns the `YOLO` class."""
    prepare()
    import ultralytics.engine.trainer as trainer
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    _patch_loaded()
    wanted = {k: v for k, v in _INTEGRATIONS_OFF.items() if k in SETTINGS and SETTINGS[k] != v}
    if wanted:
        SETTINGS.update(wanted)
    trainer.check_amp = _local_check_amp
    return YOLO
