"""Synthetic flyers (小广告) and red cloth banners (横幅) composited onto real street images.

No labelled flyers or banners exist here, so we render them: printed paper slips with a
service and a mobile number (or the number sprayed straight onto the wall), and red
cloth banners with a yellow or white slogan, in Noto Sans/Serif CJK. Each is blurred and
relit to sit in the scene, warped by a random perspective, partly occluded (a cable, a
branch, a torn corner) and alpha-blended onto a real background where no labelled or
pseudo-labelled object is. Its box is the extent of the warped corners, so it is exact.

Every synthetic image is marked as such in the manifest; it keeps the labels of its
background and lives in the same split as that background.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FONT_DIR = Path("/usr/share/fonts/opentype/noto")
FONT_FILES = {
    "sans": "NotoSansCJK-Regular.ttc",
    "sans_bold": "NotoSansCJK-Bold.ttc",
    "serif_bold": "NotoSerifCJK-Bold.ttc",
}
SC_INDEX = {"sans": 2, "sans_bold": 2, "serif_bold": 2}  # Simplified Chinese face in each .ttc

FLYER_TITLES = [
    "疏通下水道", "开锁换锁", "专业办证", "刻章", "搬家公司", "高价回收", "招工", "无抵押贷款",
    "房屋出租", "家电维修", "空调清洗", "管道疏通", "收购旧家电", "代开发票", "急招司机", "快速贷款",
]
FLYER_LINES = [
    "专业 快速 价格优惠", "24小时上门服务", "随叫随到 诚信经营", "日结工资 包吃住", "当天放款",
    "市内免费上门", "各类证件", "长期有效",
]
BANNER_SLOGANS = [
    "创建全国文明城市", "垃圾分类 从我做起", "安全生产 人人有责", "开业大酬宾", "清仓大甩卖",
    "热烈庆祝本店隆重开业", "全场五折 最后三天", "文明出行 礼让行人", "喜迎新春 共建和谐社区",
    "门面转让", "招商热线", "防范电信诈骗", "高价收购二手车",
]


class SyntheticError(RuntimeError):
    """Synthetic data cannot be made here (e.g. the CJK fonts are missing)."""


def load_fonts(font_dir: Path = FONT_DIR) -> dict[str, Path]:
    missing = [f for f in FONT_FILES.values() if not (font_dir / f).is_file()]
    if missing:
        raise SyntheticError(
            f"CJK fonts missing in {font_dir}: {', '.join(missing)}. Install Debian's fonts-noto-cjk "
            "(apt-get install -y fonts-noto-cjk) or build with --synthetic 0."
        )
    return {k: font_dir / f for k, f in FONT_FILES.items()}


def _font(fonts: dict[str, Path], kind: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(fonts[kind]), max(8, int(size)), index=SC_INDEX[kind])


def phone_number(rng: np.random.Generator) -> str:
    digits = "1" + str(rng.choice(list("3456789"))) + "".join(rng.choice(list("0123456789"), 9))
    return f"{digits[:3]} {digits[3:7]} {digits[7:]}" if rng.random() < 0.5 else digits


def _text_size(draw, text: str, font) -> tuple[int, int, int, int]:
    return draw.textbbox((0, 0), text, font=font)


def render_flyer(rng: np.random.Generator, fonts: dict[str, Path]) -> np.ndarray:
    """RGBA: a printed paper slip, or (one in five) a number sprayed straight onto the wall."""
    from PIL import Image, ImageDraw

    sprayed = rng.random() < 0.2
    title = str(rng.choice(FLYER_TITLES))
    phone = phone_number(rng)
    ink = [(10, 10, 10), (200, 20, 20), (20, 40, 170)][rng.integers(3)]
    if sprayed:
        font = _font(fonts, "sans_bold", 64)
        text = f"{title} {phone}" if rng.random() < 0.6 else f"{title}\n{phone}"
        probe = ImageDraw.Draw(Image.new("RGBA", (8, 8)))
        x0, y0, x1, y1 = probe.multiline_textbbox((0, 0), text, font=font, spacing=6)
        im = Image.new("RGBA", (x1 - x0 + 8, y1 - y0 + 8), (0, 0, 0, 0))
        color = (20, 20, 20) if rng.random() < 0.7 else (180, 20, 20)
        ImageDraw.Draw(im).multiline_text((4 - x0, 4 - y0), text, font=font, fill=color + (235,), spacing=6)
        return np.asarray(im).copy()
    w = int(rng.integers(260, 360))
    h = int(w * rng.uniform(1.1, 1.6)) if rng.random() < 0.75 else int(w * rng.uniform(0.5, 0.75))
    paper = [(245, 245, 240), (250, 240, 170), (250, 215, 215), (215, 230, 250), (240, 240, 240)]
    im = Image.new("RGBA", (w, h), paper[rng.integers(len(paper))] + (255,))
    draw = ImageDraw.Draw(im)
    size = int(w * 0.8 / max(len(title), 2))
    font = _font(fonts, "sans_bold" if rng.random() < 0.7 else "serif_bold", min(size, h // 4))
    x0, y0, x1, y1 = _text_size(draw, title, font)
    y = int(h * 0.06)
    draw.text(((w - (x1 - x0)) // 2 - x0, y - y0), title, font=font, fill=ink + (255,))
    y += (y1 - y0) + int(h * 0.06)
    small = _font(fonts, "sans", w // 13)
    for line in rng.choice(FLYER_LINES, size=int(rng.integers(0, 3)), replace=False):
        bx = _text_size(draw, str(line), small)
        if y + bx[3] - bx[1] > h * 0.7:
            break
        draw.text(((w - (bx[2] - bx[0])) // 2 - bx[0], y - bx[1]), str(line), font=small, fill=(40, 40, 40, 255))
        y += bx[3] - bx[1] + int(h * 0.04)
    phone_font = _font(fonts, "sans_bold", w // 9)
    label = f"电话:{phone}" if rng.random() < 0.5 else phone
    bx = _text_size(draw, label, phone_font)
    py = max(y, int(h * 0.92) - (bx[3] - bx[1]))
    draw.text(((w - (bx[2] - bx[0])) // 2 - bx[0], py - bx[1]), label, font=phone_font, fill=ink + (255,))
    rgba = np.asarray(im).copy()
    # Paper is not flat: a soft crease and uneven print.
    shade = 1 + 0.08 * np.sin(np.linspace(0, np.pi * rng.uniform(1, 3), w) + rng.uniform(0, 6))[None, :, None]
    rgba[..., :3] = np.clip(rgba[..., :3] * shade + rng.normal(0, 4, (h, w, 1)), 0, 255).astype(np.uint8)
    return rgba


def render_banner(rng: np.random.Generator, fonts: dict[str, Path]) -> np.ndarray:
    """RGBA: red cloth with a yellow or white slogan, folds shaded across its length."""
    from PIL import Image, ImageDraw

    slogan = str(rng.choice(BANNER_SLOGANS))
    h = int(rng.integers(110, 170))
    font = _font(fonts, "sans_bold" if rng.random() < 0.6 else "serif_bold", int(h * 0.62))
    probe = ImageDraw.Draw(Image.new("RGBA", (8, 8)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), slogan, font=font)
    margin = int(h * rng.uniform(0.4, 1.2))
    w = (x1 - x0) + 2 * margin
    red = (int(rng.integers(175, 225)), int(rng.integers(5, 35)), int(rng.integers(10, 40)))
    im = Image.new("RGBA", (w, h), red + (255,))
    draw = ImageDraw.Draw(im)
    text_color = (255, 225, 0) if rng.random() < 0.6 else (250, 250, 245)
    draw.text((margin - x0, (h - (y1 - y0)) // 2 - y0), slogan, font=font, fill=text_color + (255,))
    rgba = np.asarray(im).copy()
    folds = 1 + 0.14 * np.sin(np.linspace(0, 2 * np.pi * rng.uniform(3, 9), w) + rng.uniform(0, 6))
    sag = 1 - 0.1 * np.abs(np.linspace(-1, 1, h))[:, None]
    rgba[..., :3] = np.clip(rgba[..., :3] * (folds[None, :] * sag)[..., None], 0, 255).astype(np.uint8)
    return rgba


def _occlude(rgba: np.ndarray, rng: np.random.Generator) -> float:
    """Paint something in front of part of the ad (inside its outline); returns the covered fraction."""
    h, w = rgba.shape[:2]
    layer = np.zeros((h, w), np.uint8)
    kind = rng.integers(3)
    color = [(40, 40, 40), (70, 55, 40), (120, 120, 115)][rng.integers(3)]
    if kind == 0:  # a cable or branch crossing it
        y_a, y_b = rng.uniform(0, h, 2)
        cv2.line(layer, (0, int(y_a)), (w, int(y_b)), 255, max(2, int(min(h, w) * rng.uniform(0.03, 0.08))))
    elif kind == 1:  # a pole or a passer-by's edge along one side
        x = int(w * rng.uniform(0.0, 0.25)) if rng.random() < 0.5 else int(w * rng.uniform(0.75, 1.0))
        half = max(2, int(w * rng.uniform(0.04, 0.1)))
        cv2.rectangle(layer, (x - half, 0), (x + half, h), 255, -1)
    else:  # a torn-off corner showing the wall's shade
        cx, cy = (0 if rng.random() < 0.5 else w), (0 if rng.random() < 0.5 else h)
        r = int(min(h, w) * rng.uniform(0.15, 0.35))
        cv2.circle(layer, (cx, cy), r, 255, -1)
    mask = (layer > 0) & (rgba[..., 3] > 0)
    rgba[mask, :3] = color
    rgba[mask, 3] = 255
    return float(mask.sum() / max((rgba[..., 3] > 0).sum(), 1))


@dataclass(frozen=True)
class PlacedAd:
    kind: str  # "flyer" | "banner"
    box: tuple[float, float, float, float]  # xyxy pixels: extent of the warped corners
    occluded: float  # fraction of the ad painted over by an occluder


def paste(
    background: np.ndarray, ad_rgba: np.ndarray, quad: np.ndarray, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Warp the RGBA ad onto quad (4x2, clockwise from top-left) of the BGR background, in place."""
    H, W = background.shape[:2]
    h, w = ad_rgba.shape[:2]
    ad = ad_rgba.astype(np.float32)
    scale = (np.linalg.norm(quad[1] - quad[0]) / w + np.linalg.norm(quad[3] - quad[0]) / h) / 2
    # Blur in target pixels (mostly sharp, some out of focus or moving), applied in ad pixels.
    sigma = 1.4 * rng.uniform(0, 1) ** 2 / max(scale, 1e-3)
    if sigma > 0.3:
        ad[..., :3] = cv2.GaussianBlur(ad[..., :3], (0, 0), sigma)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    m = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    warped = cv2.warpPerspective(ad, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = warped[..., 3:4] / 255.0
    rgb = warped[..., 2::-1]  # RGBA -> BGR
    # Light it like the spot it is stuck on: the scene's local brightness and colour cast, a gradient.
    x1, y1 = np.floor(quad.min(0)).astype(int)
    x2, y2 = np.ceil(quad.max(0)).astype(int)
    region = background[max(y1, 0) : y2, max(x1, 0) : x2].reshape(-1, 3).astype(np.float32)
    local = region.mean(0) if len(region) else np.full(3, 128, np.float32)
    gain = np.clip(local.mean() / 150, 0.45, 1.15) * rng.uniform(0.85, 1.1)
    ramp = np.linspace(1 - rng.uniform(0, 0.2), 1, W, dtype=np.float32)[None, :, None]
    cast = rng.uniform(0, 0.2)
    lit = (rgb * gain * ramp) * (1 - cast) + local * cast
    out = background.astype(np.float32) * (1 - alpha) + lit * alpha
    background[:] = np.clip(out, 0, 255).astype(np.uint8)
    bx1, by1 = quad.min(0)
    bx2, by2 = quad.max(0)
    return (max(0.0, float(bx1)), max(0.0, float(by1)), min(float(W), float(bx2)), min(float(H), float(by2)))


def _free(box: np.ndarray, taken: np.ndarray, margin: float = 2.0) -> bool:
    if not len(taken):
        return True
    ix = np.minimum(box[2] + margin, taken[:, 2]) - np.maximum(box[0] - margin, taken[:, 0])
    iy = np.minimum(box[3] + margin, taken[:, 3]) - np.maximum(box[1] - margin, taken[:, 1])
    return not bool(np.any((ix > 0) & (iy > 0)))


def _looks_like_sky(image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Bright and featureless: open sky, where nothing is stuck or hung."""
    patch = image[int(lo[1]) : int(hi[1]) + 1, int(lo[0]) : int(hi[0]) + 1]
    if patch.size == 0:
        return True
    grey = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
    return bool(grey.mean() > 165 and grey.std() < 14)


def _quad(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> np.ndarray:
    """A perspective view of the w x h rectangle at (x, y): corners jittered, slightly rotated."""
    base = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
    centre = base.mean(0)
    a = np.radians(rng.uniform(-8, 8))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    quad = (base - centre) @ rot.T + centre
    # Perspective: one side shorter, as if seen at an angle.
    squeeze = rng.uniform(0, 0.18) * h
    if rng.random() < 0.5:
        quad[1, 1] += squeeze / 2
        quad[2, 1] -= squeeze / 2
    else:
        quad[0, 1] += squeeze / 2
        quad[3, 1] -= squeeze / 2
    return quad + rng.uniform(-0.04, 0.04, (4, 2)) * [w, h]


def compose(
    background: np.ndarray,
    occupied: np.ndarray,
    rng: np.random.Generator,
    fonts: dict[str, Path],
) -> tuple[np.ndarray, list[PlacedAd]]:
    """A copy of the BGR background with flyers and/or a banner added where nothing labelled is.

    Banners go in the upper part (hung on facades, fences, across gates), flyers at
    eye height (walls, poles, doors). Returns no ads when none fits.
    """
    image = background.copy()
    H, W = image.shape[:2]
    taken = np.asarray(occupied, np.float64).reshape(-1, 4)
    roll = rng.random()
    plan = (["flyer"] * int(rng.integers(1, 6)) if roll < 0.5 else []) + (["banner"] if roll >= 0.35 else [])
    placed: list[PlacedAd] = []
    for kind in plan:
        ad = render_flyer(rng, fonts) if kind == "flyer" else render_banner(rng, fonts)
        ah, aw = ad.shape[:2]
        for _ in range(40):
            if kind == "banner":
                w = W * rng.uniform(0.3, 0.8)
                y_band = (0.03, 0.6)
            else:
                w = W * rng.uniform(0.04, 0.13)
                y_band = (0.12, 0.85)
            h = w * ah / aw
            if w < 12 or h < 8 or w > W - 4 or h > H * 0.6:
                continue
            x = rng.uniform(2, W - w - 2)
            y = rng.uniform(H * y_band[0], max(H * y_band[0], H * y_band[1] - h))
            quad = _quad(rng, x, y, w, h)
            lo, hi = quad.min(0), quad.max(0)
            if lo[0] < 1 or lo[1] < 1 or hi[0] > W - 1 or hi[1] > H - 1:
                continue
            if not _free(np.r_[lo, hi], taken) or _looks_like_sky(background, lo, hi):
                continue
            occluded = _occlude(ad, rng) if rng.random() < 0.35 else 0.0
            box = paste(image, ad, quad, rng)
            placed.append(PlacedAd(kind, box, occluded))
            taken = np.vstack([taken, np.r_[lo, hi][None]])
            break
    return image, placed
