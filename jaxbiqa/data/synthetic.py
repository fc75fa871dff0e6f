"""The embedded default dataset: distorted crops of real photographs that ship inside
scikit-image (`skimage.data`) and scikit-learn (`load_sample_images`), so the demo and the tests
train on real image content with no download.

Construction (all deterministic given `SynthSpec.seed`):
* photos: the real photographs listed in PHOTOS (grey ones are repeated to 3 channels); the
  photos are shuffled once with the seed and the first `ceil(test_fraction * n)` form the `test`
  split, so no photo (and no crop of it) is in both `train` and `test`: generalisation to unseen
  content. The `seen` split (`seen_crops_per_photo` crops of each training photo, from an RNG
  stream of its own: new windows, new distortion types, noise fields and blur directions) holds
  images never trained on whose content was: the in-distribution check of what training learns;
* crops: per photo, `crops_per_photo` random square windows of side between `crop_size` and
  `4 * crop_size` (bounded by the photo's shorter side), resized to `crop_size` with Lanczos;
* distortions, in the spirit of KADID-10k, each at 5 levels: Gaussian blur, motion blur (random
  direction per crop), Gaussian noise (one noise field per crop, scaled per level), JPEG, darkening
  and brightening (gamma curves), contrast reduction, over-saturation (saturation only for colour
  photos). Each crop gets `types_per_crop` types drawn without replacement, every one at all
  levels, plus the clean crop itself (`include_clean`);
* target: the full-reference SSIM (Wang et al. 2004: Gaussian window sigma 1.5, per colour
  channel, scikit-image) of the distorted image against its clean crop, mapped monotonically to
  `mos = mos_norm = 1 + 4 * max(S, 0) ** 2` (1 worst, 5 for the clean crop), where S is the
  lowest SSIM over levels 1..l of the same crop and type. SSIM alone now and then ranks a
  stronger distortion above a weaker one (motion blur along a periodic texture, extreme JPEG on
  smooth content); taking the running minimum keeps the target monotone in the level, as a
  viewer would rate it. The square spreads the typical SSIM range 0.3-1 over the 1-5 scale;
* annotations in the eight Q-Reasoning fields, written from templates with the photo's content
  and the distortion: `description` (the photo's content), `good_aspect`, `bad_aspect`,
  `instruction` (the edit that would repair it), `quality` = mos - 1 (the human 0-4 scale),
  `good_impact` = round(mos), `bad_impact` = the level (1 for clean crops), `edit_quality` =
  quality + (4 - quality) * r, with r = 0.9 for photometric distortions (fully reversible edits)
  and 0.5 for blur, noise and JPEG (detail is lost); plus Q-Insight's `distortion` class and
  `severity` (slight / moderate / obvious / serious / catastrophic by level; "none" when clean).

`write_synthetic(out_dir, spec)` saves PNGs under `images/`, the records as `index.jsonl` (the
generic JSON-lines form, read back by `sources.read_jsonl`) and `info.json` (the spec, counts and
every image's distortion type, level and SSIM). scikit-image and scikit-learn are imported only
here, when a set is generated.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from jaxbiqa.config import UserError
from jaxbiqa.data.records import SEVERITIES, make_record


@dataclasses.dataclass(frozen=True)
class Photo:
    name: str
    subject: str      # a short noun phrase for the templates
    content: str      # one sentence fragment describing the photo
    colour: bool


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "astronaut", "an astronaut in a white spacesuit posing in front of a flag", True),
    Photo("chelsea", "cat", "a ginger tabby cat looking to the side", True),
    Photo("coffee", "cup of coffee", "a cup of coffee on a saucer, seen from above", True),
    Photo("rocket", "rocket", "a rocket standing on its launch pad under a blue sky", True),
    Photo("motorcycle", "motorcycle", "a motorcycle standing in a cluttered room", True),
    Photo("hubble_deep_field", "galaxies", "many distant galaxies scattered over a dark sky", True),
    Photo("immunohistochemistry", "tissue", "a microscope view of stained tissue cells", True),
    Photo("retina", "retina", "the back of a human eye with its blood vessels", True),
    Photo("china", "temple", "a Chinese temple with a curved roof among trees", True),
    Photo("flower", "flower", "a red flower in close-up with green leaves", True),
    Photo("camera", "photographer", "a man with a camera on a tripod in a field, in black and white", False),
    Photo("moon", "moon", "the cratered surface of the moon, in black and white", False),
    Photo("coins", "coins", "old coins laid out in rows on a dark background", False),
    Photo("grass", "grass", "a close-up of grass blades, in black and white", False),
    Photo("gravel", "gravel", "a close-up of gravel stones, in black and white", False),
    Photo("brick", "brick wall", "a brick wall, in black and white", False),
)
PHOTO_NAMES: tuple[str, ...] = tuple(p.name for p in PHOTOS)


def load_photo(name: str) -> np.ndarray:
    """The named photograph as RGB uint8."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        image = load_sample_images().images[0 if name == "china" else 1]
    else:
        import skimage.data

        image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    image = np.asarray(image)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


# ---------------------------------------------------------------- distortions

def _gaussian_blur(x: np.ndarray, level: int, ctx: dict) -> np.ndarray:
    sigma = (0.6, 1.2, 2.0, 3.0, 4.5)[level - 1]
    return ndimage.gaussian_filter(x, (sigma, sigma, 0))


def _motion_blur(x: np.ndarray, level: int, ctx: dict) -> np.ndarray:
    length = (3, 7, 11, 17, 25)[level - 1]
    kernel = Image.new("L", (length, length))
    half = (length - 1) / 2
    dx, dy = math.cos(ctx["angle"]) * half, math.sin(ctx["angle"]) * half
    ImageDraw.Draw(kernel).line([(half - dx, half - dy), (half + dx, half + dy)], fill=255, width=1)
    k = np.asarray(kernel, dtype=np.float64)
    k /= k.sum()
    return np.stack([ndimage.convolve(x[..., c], k, mode="reflect") for c in range(3)], axis=-1)


def _noise(x: np.ndarray, level: int, ctx: dict) -> np.ndarray:
    return x + (5.0, 10.0, 18.0, 30.0, 45.0)[level - 1] * ctx["noise"]


def _jpeg(x: np.ndarray, level: int, ctx: dict) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buffer, "JPEG", quality=(40, 22, 12, 6, 2)[level - 1])
    return np.asarray(Image.open(buffer), dtype=np.float64)


def _gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    return 255.0 * (x / 255.0) ** gamma


def _darken(x: np.ndarray, level: int, ctx: dict) -> np.ndarray:
    return _gamma(x, (1.3, 1.7, 2.2, 2.9, 3.8)[level - 1])


def _brighten(x: np.ndarray, level: int, ctx: dict) -> np.ndarray:
    return _gamma(x, (0.8, 0.65, 0.5, 0.38, 0.28)[level - 1])


def _contrast(x: np.ndarray, level: int, ctx: dict) -> np.ndarray:
    keep = (0.8, 0.62, 0.45, 0.3, 0.18)[level - 1]
    return x.mean() + keep * (x - x.mean())


def _saturation(x: np.ndarray, level: int, ctx: dict) -> np.ndarray:
    gain = (1.5, 2.0, 2.7, 3.5, 4.5)[level - 1]
    grey = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    return grey + gain * (x - grey)


@dataclasses.dataclass(frozen=True)
class Distortion:
    name: str
    klass: str                     # Q-Insight class name, the `distortion` field
    apply: Callable[[np.ndarray, int, dict], np.ndarray]
    flaw: str                      # bad_aspect template; {adv}: severity adverb
    fix: str                       # instruction
    reversible: bool               # photometric: an edit can undo it almost fully


DISTORTIONS: tuple[Distortion, ...] = (
    Distortion("gaussian_blur", "blur", _gaussian_blur,
               "The whole image is {adv} blurred, so edges and fine textures look soft.",
               "Sharpen the image to bring back crisp edges and fine detail.", False),
    Distortion("motion_blur", "blur", _motion_blur,
               "The image is {adv} smeared by motion blur along one direction, doubling the edges.",
               "Apply motion deblurring, or retake the photo with a faster shutter.", False),
    Distortion("noise", "noise", _noise,
               "The image is {adv} noisy: random coloured grain covers it, most visibly in flat areas.",
               "Denoise the image while keeping its edges and textures.", False),
    Distortion("jpeg", "compression", _jpeg,
               "The image is {adv} compressed: JPEG blocks show in smooth areas and edges ring.",
               "Remove the compression artifacts, or save the photo again at a higher JPEG quality.", False),
    Distortion("darken", "darken", _darken,
               "The image is {adv} too dark, so detail disappears in the shadows.",
               "Brighten the image and lift the shadows.", True),
    Distortion("brighten", "brighten", _brighten,
               "The image is {adv} overexposed, so highlights and colours look washed out.",
               "Lower the exposure to recover the highlights and colours.", True),
    Distortion("contrast", "contrast", _contrast,
               "The contrast is {adv} reduced, so the image looks flat and hazy.",
               "Increase the contrast so that the subject stands out again.", True),
    Distortion("saturation", "saturation", _saturation,
               "The colours are {adv} oversaturated and look unnatural, with clipped colour areas.",
               "Reduce the colour saturation to natural levels.", True),
)
DISTORTION_NAMES: tuple[str, ...] = tuple(d.name for d in DISTORTIONS)
ADVERBS = ("slightly", "moderately", "obviously", "seriously", "catastrophically")
EFFECTS = ("It is hard to notice at first glance.", "It is noticeable, but the content stays clear.",
           "It clearly lowers the quality of the image.", "It strongly degrades the image and hides many details.",
           "It makes the content hard to recognise.")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- quality target and annotations

def ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(reference, distorted, channel_axis=-1, data_range=255,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def quality_from_ssim(value: float) -> float:
    """The documented monotone map from SSIM to the 1-5 target."""
    return 1.0 + 4.0 * max(value, 0.0) ** 2


def annotate(photo: Photo, distortion: Distortion | None, level: int, mos: float) -> dict[str, Any]:
    """The eight Q-Reasoning fields plus Q-Insight's class and severity for one image."""
    quality = mos - 1.0
    fields: dict[str, Any] = {"description": f"This is a crop of a photo of {photo.content}.",
                              "quality": quality, "good_impact": float(min(5, max(1, round(mos))))}
    if distortion is None:
        fields.update(
            good_aspect=f"The image shows the {photo.subject} with sharp detail, clean tones and natural exposure.",
            bad_aspect="No obvious distortion is visible.", instruction="No edit is needed.",
            bad_impact=1.0, edit_quality=quality, distortion="none", severity="none")
        return fields
    if level == 5:
        good = "The overall layout of the scene can still be made out."
    elif distortion.reversible:
        good = f"The image is still sharp, and the fine detail of the {photo.subject} is kept."
    else:
        good = "The colours and exposure still look natural" + (
            f", and the {photo.subject} can be recognised easily." if level <= 2 else ".")
    recover = 0.9 if distortion.reversible else 0.5
    fields.update(
        good_aspect=good,
        bad_aspect=f"{distortion.flaw.format(adv=ADVERBS[level - 1])} {EFFECTS[level - 1]}",
        instruction=distortion.fix, bad_impact=float(level), edit_quality=quality + (4.0 - quality) * recover,
        distortion=distortion.klass, severity=SEVERITIES[level - 1])
    return fields


# ---------------------------------------------------------------- generation

@dataclasses.dataclass(frozen=True)
class SynthSpec:
    seed: int = 0
    photos: tuple[str, ...] = PHOTO_NAMES
    crops_per_photo: int = 3
    crop_size: int = 96
    types_per_crop: int = 2
    distortions: tuple[str, ...] = DISTORTION_NAMES
    include_clean: bool = True
    test_fraction: float = 0.25
    seen_crops_per_photo: int = 0  # crops per training photo for the `seen` split (0: no such split)

    def __post_init__(self) -> None:
        unknown = set(self.photos) - set(PHOTO_NAMES)
        if unknown:
            raise UserError(f"unknown photo(s) {sorted(unknown)}; available: {', '.join(PHOTO_NAMES)}")
        unknown = set(self.distortions) - set(DISTORTION_NAMES)
        if unknown:
            raise UserError(f"unknown distortion(s) {sorted(unknown)}; available: {', '.join(DISTORTION_NAMES)}")
        if not self.photos or self.crops_per_photo < 1 or self.crop_size < 28 or self.types_per_crop < 0 \
                or self.seen_crops_per_photo < 0:
            raise UserError("need at least one photo and crop, crop_size >= 28, types_per_crop >= 0 and "
                             f"seen_crops_per_photo >= 0: {self}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise UserError(f"test_fraction must be in [0, 1), got {self.test_fraction}")


@dataclasses.dataclass
class SynthExample:
    record: dict[str, Any]         # the record; `image` is the file name it is saved under
    pixels: np.ndarray             # RGB uint8
    distortion: str                # DISTORTION_NAMES entry, or "none"
    level: int                     # 1-5, 0 when clean
    ssim: float                    # the raw SSIM of this image against its clean crop
    crop: str                      # photo_crop, shared by the clean crop and its distorted versions


def _random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    height, width = photo.shape[:2]
    largest = min(height, width, 4 * size)
    side = int(rng.integers(min(size, largest), largest + 1))  # a photo smaller than `size` is upscaled
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    window = Image.fromarray(photo[top:top + side, left:left + side])
    return np.asarray(window.resize((size, size), Image.Resampling.LANCZOS))


def held_out_photos(spec: SynthSpec) -> set[str]:
    order = np.random.default_rng(spec.seed).permutation(len(spec.photos))
    count = math.ceil(spec.test_fraction * len(spec.photos))
    return {spec.photos[i] for i in order[:count]}


def generate(spec: SynthSpec = SynthSpec(), progress: bool = False) -> list[SynthExample]:
    """All images and records of the set, in a fixed order."""
    by_name = {p.name: p for p in PHOTOS}
    testing = held_out_photos(spec)
    chosen = [d for d in DISTORTIONS if d.name in spec.distortions]
    examples = []
    photos = spec.photos
    if progress:
        from tqdm import tqdm

        photos = tqdm(photos, desc="synthetic photos", unit="photo")
    for photo_index, name in enumerate(photos):
        photo = by_name[name]
        pixels = load_photo(name)
        usable = [d for d in chosen if photo.colour or d.name != "saturation"]
        held_out = name in testing
        crops = [("test" if held_out else "train", spec.crops_per_photo, [spec.seed, photo_index], "")]
        if not held_out and spec.seen_crops_per_photo:
            crops.append(("seen", spec.seen_crops_per_photo, [spec.seed, photo_index, 1], "seen"))
        for split, count, stream, tag in crops:
            rng = np.random.default_rng(stream)
            for crop_index in range(count):
                crop_id = f"{name}_{tag}{crop_index:02d}"
                examples += _crop_examples(photo, pixels, crop_id, split, usable, spec, rng)
    return examples


def _crop_examples(photo: Photo, pixels: np.ndarray, crop_id: str, split: str, usable: list[Distortion],
                   spec: SynthSpec, rng: np.random.Generator) -> list[SynthExample]:
    """One random crop of `pixels`: its clean version (when `include_clean`) and `types_per_crop`
    distortion types drawn from `usable`, each at every level."""
    clean = _random_crop(pixels, spec.crop_size, rng)
    picks = rng.choice(len(usable), size=min(spec.types_per_crop, len(usable)), replace=False)
    ctx = {"angle": float(rng.uniform(0, math.pi)), "noise": rng.standard_normal(clean.shape)}
    variants: list[tuple[Distortion | None, int]] = [(None, 0)] if spec.include_clean else []
    variants += [(usable[i], level) for i in sorted(picks) for level in range(1, 6)]
    examples = []
    floor = 1.0  # running minimum of SSIM over the levels of one distortion type
    for distortion, level in variants:
        if distortion is None:
            image, value = clean, 1.0
        else:
            image = _to_uint8(distortion.apply(clean.astype(np.float64), level, ctx))
            value = ssim(clean, image)
            floor = value if level == 1 else min(floor, value)
        image_id = f"{crop_id}_{distortion.name}_{level}" if distortion else f"{crop_id}_clean"
        mos = quality_from_ssim(floor if distortion else 1.0)
        record = make_record(id=image_id, image=f"images/{image_id}.png", dataset="synthetic", split=split,
                             mos=mos, mos_norm=mos, **annotate(photo, distortion, level, mos))
        examples.append(SynthExample(record, image, distortion.name if distortion else "none", level, value, crop_id))
    return examples


def write_synthetic(out_dir: str | Path, spec: SynthSpec = SynthSpec(), progress: bool = True) -> Path:
    """Generates the set into `out_dir` and returns the path of its `index.jsonl`."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    examples = generate(spec, progress=progress)
    image = None
    try:
        with open(out / "index.jsonl", "w", encoding="utf-8") as index:
            for example in examples:
                image = out / example.record["image"]
                Image.fromarray(example.pixels).save(image, "PNG")
                index.write(json.dumps(_json_safe(example.record), ensure_ascii=False) + "\n")
    except OSError as err:  # a write error (disk full, a size limit) names no file: say which one it was
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(image or out / "index.jsonl")) from err
    splits = {s: sum(e.record["split"] == s for e in examples) for s in ("train", "seen", "test")}
    info = {"spec": dataclasses.asdict(spec), "count": len(examples), "splits": splits,
            "test_photos": sorted(held_out_photos(spec)),
            "target": "mos = mos_norm = 1 + 4 * max(SSIM, 0) ** 2 against the clean crop",
            "images": {e.record["id"]: {"distortion": e.distortion, "level": e.level, "ssim": e.ssim}
                       for e in examples}}
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return out / "index.jsonl"


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """NaN numbers are left out (JSON has no NaN); the reader fills them back in."""
    return {k: v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))}
