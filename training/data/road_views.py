"""Road-camera views of the vehicle images we have: night, infrared, dusk, rain, glare, a
camera looking down, and the text a Chinese checkpoint camera burns into every frame.

Synthetic, and named so: every file is `synthetic__roadview_...`, so evaluation reports it
apart from the real val split and it never counts as real evaluation.

Why: the sources are daylight street photos. Checkpoint and road cameras see trucks at
night under headlights, in monochrome infrared, from a pole above the lane, with a
timestamp, lane number and plate text on the picture; the model trained on daylight alone
found no truck on such frames and read a red cab as a bin and a cargo bed as a window ad.
The variants keep every box of the original (human and teacher labels), so the truck is
taught as a truck and the rest of the frame stays a negative for every violation class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Frames holding one of these (a human or teacher box) get road-camera variants.
ROAD_VEHICLES = frozenset(["truck", "bus"])
# Boxes smaller than this (pixels, either side) after a warp are dropped, not taught.
MIN_SIDE = 4.0

CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
)
WEEKDAYS = "一二三四五六日"
ROADS = ("建设路", "人民大道", "解放路", "中山路", "环城北路", "工业园区", "G205", "S312", "滨江大道")
PLATE_REGIONS = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤川青藏琼宁"


@dataclass
class RoadView:
    image: np.ndarray  # BGR
    boxes: np.ndarray  # (N, 4) pixels, the kept boxes after any warp
    keep: np.ndarray  # (N_in,) bool: which input boxes survived
    styles: list[str]


def has_road_vehicle(classes: list[str]) -> bool:
    return any(c in ROAD_VEHICLES for c in classes)


def cjk_font(size: int):
    """A PIL font that draws Chinese, or None (the overlay then writes ASCII only)."""
    from PIL import ImageFont

    for path in CJK_FONT_CANDIDATES:
        if Path(path).is_file():
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    return None


def render(bgr: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> RoadView:
    """One road-camera variant of `bgr` with its boxes carried along."""
    image = bgr.astype(np.float32) / 255.0
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    styles: list[str] = []
    keep = np.ones(len(boxes), bool)
    if rng.random() < 0.45:
        image, boxes, keep = _look_down(image, boxes, rng)
        styles.append("overhead")
    light = rng.choice(["night", "infrared", "dusk", "day"], p=[0.4, 0.25, 0.2, 0.15])
    if light == "night":
        image = _night(image, boxes, rng)
    elif light == "infrared":
        image = _infrared(image, rng)
    elif light == "dusk":
        image = _dusk(image, rng)
    styles.append(str(light))
    if rng.random() < 0.3:
        image = _rain(image, rng)
        styles.append("rain")
    image = np.clip(image * 255.0 + rng.normal(0, rng.uniform(2, 8), image.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.85:
        image = _burn_in_text(image, boxes, rng)
        styles.append("text")
    image = _compress(image, rng)
    return RoadView(image, boxes, keep, styles)


def _look_down(image, boxes, rng):
    """A camera on a pole above the lane: the far (top) edge narrows, the scene tilts."""
    import cv2

    h, w = image.shape[:2]
    squeeze = rng.uniform(0.08, 0.22) * w
    shift = rng.uniform(-0.05, 0.05) * w
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[squeeze + shift, 0], [w - squeeze + shift, 0], [w, h], [0, h]])
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    out, keep = [], np.zeros(len(boxes), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        corners = np.float32([[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]])
        p = cv2.perspectiveTransform(corners, matrix)[0]
        nx1, ny1 = np.clip(p[:, 0].min(), 0, w), np.clip(p[:, 1].min(), 0, h)
        nx2, ny2 = np.clip(p[:, 0].max(), 0, w), np.clip(p[:, 1].max(), 0, h)
        if nx2 - nx1 >= MIN_SIDE and ny2 - ny1 >= MIN_SIDE:
            out.append([nx1, ny1, nx2, ny2])
            keep[i] = True
    return warped, np.asarray(out, np.float64).reshape(-1, 4), keep


def _night(image, boxes, rng):
    """Dark, blue-grey street light, and headlights with bloom at the foot of vehicles."""
    import cv2

    h, w = image.shape[:2]
    dark = np.power(image, rng.uniform(1.6, 2.6)) * rng.uniform(0.35, 0.65)
    dark *= np.float32([rng.uniform(1.0, 1.25), rng.uniform(0.9, 1.05), rng.uniform(0.75, 0.95)])  # BGR
    glow = np.zeros((h, w), np.float32)
    for x1, y1, x2, y2 in boxes[: 6]:
        if rng.random() < 0.6:
            radius = max(2, int(0.07 * (x2 - x1)))
            y = int(y1 + rng.uniform(0.7, 0.9) * (y2 - y1))
            for fx in (0.2, 0.8):
                cv2.circle(glow, (int(x1 + fx * (x2 - x1)), y), radius, 1.0, -1)
    if rng.random() < 0.4:  # an oncoming car's lights or a street lamp in view
        cv2.circle(glow, (int(rng.uniform(0, w)), int(rng.uniform(0.2, 0.8) * h)), int(0.02 * w) + 2, 1.0, -1)
    if glow.any():
        bloom = cv2.GaussianBlur(glow, (0, 0), sigmaX=max(2.0, 0.015 * w)) * rng.uniform(1.5, 3.0)
        dark = dark + (glow + bloom)[..., None] * np.float32([0.85, 0.95, 1.0])
    return np.clip(dark, 0, 1)


def _infrared(image, rng):
    """Monochrome infrared night mode: grey, flat, bright where IR reflects."""
    gray = image @ np.float32([0.114, 0.587, 0.299])
    gray = np.clip((gray - gray.mean()) * rng.uniform(0.6, 0.9) + rng.uniform(0.35, 0.55), 0, 1)
    return np.repeat(gray[..., None], 3, axis=2)


def _dusk(image, rng):
    out = np.power(image, rng.uniform(1.2, 1.5)) * rng.uniform(0.6, 0.85)
    out = out * np.float32([0.85, 0.95, 1.1]) + rng.uniform(0.02, 0.08)  # warm, hazy
    return np.clip(out, 0, 1)


def _rain(image, rng):
    import cv2

    h, w = image.shape[:2]
    streaks = np.zeros((h, w), np.float32)
    n = int(rng.uniform(0.0005, 0.002) * h * w)
    xs, ys = rng.integers(0, w, n), rng.integers(0, h, n)
    length = max(4, int(0.04 * h))
    slant = int(rng.uniform(-0.3, 0.3) * length)
    for x, y in zip(xs, ys):
        cv2.line(streaks, (int(x), int(y)), (int(x) + slant, int(y) + length), 1.0, 1)
    streaks = cv2.GaussianBlur(streaks, (3, 3), 0) * rng.uniform(0.25, 0.5)
    hazy = image * 0.85 + 0.08
    return np.clip(hazy + streaks[..., None], 0, 1)


def _burn_in_text(image, boxes, rng):
    """Timestamp, place and lane at the frame's edges; sometimes a plate read-out box."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    size = max(10, int(rng.uniform(0.028, 0.045) * h))
    font = cjk_font(size)
    stamp = (
        f"{int(rng.integers(2019, 2027))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d} "
        f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}"
    )
    road = ROADS[int(rng.integers(len(ROADS)))]
    lane = int(rng.integers(1, 5))
    plate = PLATE_REGIONS[int(rng.integers(len(PLATE_REGIONS)))] + chr(65 + int(rng.integers(26))) + "".join(
        str(int(d)) for d in rng.integers(0, 10, 5))
    if font is None:  # no CJK font on this machine: the ASCII parts only
        lines = [stamp, f"K{int(rng.integers(1, 99))}+{int(rng.integers(0, 999)):03d} LANE {lane}"]
        plate = plate[1:]
    else:
        lines = [f"{stamp} 星期{WEEKDAYS[int(rng.integers(7))]}", f"{road}卡口 {lane}车道"]
    pil = Image.fromarray(image[..., ::-1])
    draw = ImageDraw.Draw(pil)
    colour = (255, 255, 255) if rng.random() < 0.7 else (255, 255, 0)
    draw.text((int(0.02 * w), int(0.02 * h)), lines[0], fill=colour, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    y = int(h - 0.02 * h - size * 1.3)
    draw.text((int(0.02 * w), y), lines[1], fill=colour, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    if rng.random() < 0.5:
        px, py = int(rng.uniform(0.55, 0.75) * w), int(0.02 * h)
        draw.rectangle([px - 4, py - 2, px + size * 5, py + int(size * 1.4)], fill=(0, 0, 0))
        draw.text((px, py), plate, fill=(255, 255, 255), font=font)
    return np.ascontiguousarray(np.asarray(pil)[..., ::-1])


def _compress(image, rng):
    """A stream's encoder: blockiness, and softness from a lower resolution sensor."""
    import cv2

    h, w = image.shape[:2]
    if rng.random() < 0.4:
        f = rng.uniform(0.5, 0.8)
        small = cv2.resize(image, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 70))])
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else image
