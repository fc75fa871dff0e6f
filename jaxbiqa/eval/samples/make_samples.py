"""Regenerate the bundled sample prediction files (made-up data, deterministic).

    python jaxbiqa/eval/samples/make_samples.py [OUT_DIR]

Writes, next to this script (or into OUT_DIR), in the authors' released layout (see jaxbiqa.eval.predictions):

* model_a/koniq/p0.json, p1.json   a score-only-like model: image scores track the MOS closely,
                                   caption-conditioned ones less so; one unparsable output (-1);
                                   rows carry an inline caption_score as the authors' koniq/ rows do
* model_a/koniq_caption/p0.json    caption-only pass-2 scores
* model_a/csiq/p0.json, p1.json    DMOS targets in [0, 1] (lower is better) stored as strings
* model_a/csiq_caption/p0.json
* model_b/koniq/p0.json, model_b/koniq_caption/p0.json   a more self-consistent model, fewer keys
* human.json                       Q-Reasoning-style human texts for some of the koniq images

All images, texts and scores are invented; no real image is referred to.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 3  # chosen so that the demo table shows the expected ordering (image > caption+think > caption)
N_KONIQ = 20
N_CSIQ = 12
N_HUMAN = 12

SUBJECTS = [
    "a red bicycle leaning against a brick wall", "a bowl of noodles on a wooden table",
    "a harbour with small fishing boats", "a cat sleeping on a windowsill", "a mountain lake at dawn",
    "a crowded street market", "a close-up of a sunflower", "an old stone bridge over a river",
    "a child flying a kite on a beach", "a city skyline at night", "a plate of fruit on a kitchen counter",
    "a dog running across a lawn", "a snowy forest path", "a train arriving at a platform",
    "a portrait of an elderly man", "a bookshelf in a quiet library", "a field of tulips",
    "a lighthouse on a rocky coast", "a cup of coffee next to a laptop", "a parking lot with asphalt pavement",
]
CSIQ_SCENES = ["bridge", "shroom", "fisher", "lake", "butter_flower", "redwood"]
CSIQ_DISTORTIONS = ["AWGN", "BLUR", "JPEG", "jpeg2000", "fnoise", "contrast"]
# Phrases by quality level 1 (bad) .. 5 (excellent).
LOOK = {
    1: "The image is very blurry and dark, with heavy noise that hides most details.",
    2: "The image is soft and noisy, and the colours look washed out.",
    3: "The image is reasonably clear, although some areas are soft and the lighting is flat.",
    4: "The image is sharp with good colours and balanced lighting.",
    5: "The image is crisp, well exposed and rich in fine detail, with vivid natural colours.",
}
JUDGE = {
    1: "Severe blur and noise make the picture hard to read, so the quality is bad.",
    2: "Noise and softness are clearly visible, so the quality is poor.",
    3: "Details are acceptable but not striking, so the quality is fair.",
    4: "The subject is clear and the exposure is good, so the quality is good.",
    5: "Focus, exposure and colour are all excellent, so the quality is excellent.",
}
GOOD = {
    1: "The subject can still be recognised.", 2: "The composition is simple and easy to follow.",
    3: "The subject is centred and the colours are natural.", 4: "The focus is sharp and the colours are pleasant.",
    5: "Fine details, vivid colours and a clean composition.",
}
BAD = {
    1: "The whole picture is blurred, dark and noisy.", 2: "The image is noisy and the colours are dull.",
    3: "The lighting is flat and the background is a little soft.", 4: "Some highlights are slightly overexposed.",
    5: "There is no particular problem.",
}


def _level(score: float) -> int:
    return min(5, max(1, round(score)))


def _rating(rng: random.Random, target: float, noise: float) -> float:
    return round(min(5.0, max(1.0, rng.gauss(target, noise))), 2)


def _completion(subject: str, level: int, rating: float) -> str:
    return (
        f"<caption>\nThis photograph shows {subject}. {LOOK[level]}\n</caption>\n\n"
        f"<think>\n{JUDGE[level]}\n</think>\n\n<answer>\n{{\n  \"rating\": {rating:.2f}\n}}\n</answer>"
    )


def _pass2(level: int, rating: float) -> str:
    return f"<think>\n{JUDGE[level]}\n</think>\n<answer>\n{{\"rating\": {rating:.2f}}}\n</answer>"


def _koniq(rng: random.Random, gts: list[float], noise: tuple[float, float, float], invalid: int | None):
    """Main-folder and caption-folder records for the KonIQ-like set (targets = MOS rescaled to 1-5).

    `noise`: standard deviations of the image, caption+think and caption-only ratings around the target.
    """
    image_noise, reasoning_noise, caption_noise = noise
    main, caption = [], []
    for i, gt in enumerate(gts):
        image = f"sample_{i:04d}.jpg"
        subject = SUBJECTS[i % len(SUBJECTS)]
        overall = _rating(rng, gt, image_noise)
        reasoning = _rating(rng, gt, reasoning_noise)
        caption_only = _rating(rng, gt, caption_noise)
        perceived = _level(overall)
        text = _completion(subject, perceived, overall)
        if i == invalid:  # an output with no parsable answer: the authors store -1
            overall, text = -1.0, f"<caption>\nThis photograph shows {subject}.\n</caption>\n\n<think>\nThe image"
        main.append({
            "image": image, "gt_score": gt, "overall_score": overall, "reasoning_score": reasoning,
            "caption_score": _rating(rng, caption_only, 0.05),  # inline re-run, slightly different
            "perception_text": text, "reasoning_text": _pass2(perceived, reasoning),
        })
        caption.append({"image": image, "gt_score": gt, "caption_score": caption_only,
                        "reasoning_text": _pass2(perceived, caption_only)})
    return main, caption


def _csiq(rng: random.Random):
    """DMOS targets in [0, 1], lower is better; gt_score is a string in the main folder as released."""
    main, caption = [], []
    for i in range(N_CSIQ):
        scene, distortion = CSIQ_SCENES[i % len(CSIQ_SCENES)], CSIQ_DISTORTIONS[(i * 5) % len(CSIQ_DISTORTIONS)]
        image = f"CSIQ/dst_imgs/{distortion}/{scene}.{distortion}.{i % 5 + 1}.png"
        dmos = round(rng.uniform(0.02, 0.9), 6)
        quality = 5.0 - 4.0 * dmos
        overall, reasoning, caption_only = (_rating(rng, quality, s) for s in (0.6, 0.8, 0.8))
        perceived = _level(overall)
        main.append({
            "image": image, "gt_score": f"{dmos:g}", "overall_score": overall, "reasoning_score": reasoning,
            "perception_text": _completion(f"a {scene.replace('_', ' ')} scene", perceived, overall),
            "reasoning_text": _pass2(perceived, reasoning),
        })
        caption.append({"image": image, "gt_score": dmos, "caption_score": caption_only,
                        "reasoning_text": _pass2(perceived, caption_only)})
    return main, caption


def _human(rng: random.Random, koniq: list[dict]) -> list[dict]:
    records = []
    for i, row in enumerate(koniq[:N_HUMAN]):
        level = _level(row["gt_score"] + rng.uniform(-0.5, 0.5))
        quality = round(level - 1 + rng.uniform(-0.3, 0.3), 4)
        edit = round(min(4.0, quality + rng.uniform(0.0, 0.8)), 4)
        records.append({
            "description": {"answer": f"It shows {SUBJECTS[i % len(SUBJECTS)]}."},
            "quality": quality,
            "good_aspect": {"answer": GOOD[level]},
            "good_impact": rng.randint(1, 5),
            "bad_aspect": {"answer": BAD[level]},
            "bad_impact": rng.randint(1, 5),
            "edit_quality": edit,
            "quality_shift": round(edit - quality, 4),
            "instruction": {"answer": "Increase the sharpness and brighten the shadows slightly."},
            "image": row["image"],
        })
    return records


def _write(path: Path, records: list[dict]) -> None:
    """A JSON list with one record per line (compact, still diffable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n", encoding="utf-8")


def main(out: Path = HERE) -> None:
    rng = random.Random(SEED)
    koniq_gt = [rng.uniform(1.3, 4.6) for _ in range(N_KONIQ)]
    koniq_a, koniq_a_caption = _koniq(rng, koniq_gt, noise=(0.3, 0.6, 0.75), invalid=7)
    csiq_a, csiq_a_caption = _csiq(rng)
    koniq_b, koniq_b_caption = _koniq(rng, koniq_gt, noise=(0.3, 0.4, 0.4), invalid=None)
    half = N_KONIQ // 2
    _write(out / "model_a/koniq/p0.json", koniq_a[:half])
    _write(out / "model_a/koniq/p1.json", koniq_a[half:])
    _write(out / "model_a/koniq_caption/p0.json", koniq_a_caption)
    _write(out / "model_a/csiq/p0.json", csiq_a[: N_CSIQ // 2])
    _write(out / "model_a/csiq/p1.json", csiq_a[N_CSIQ // 2 :])
    _write(out / "model_a/csiq_caption/p0.json", csiq_a_caption)
    # model_b keeps fewer keys (scores and the pass-1 text), as key sets differ between releases
    keep = ("image", "gt_score", "overall_score", "reasoning_score", "caption_score", "perception_text")
    _write(out / "model_b/koniq/p0.json", [{k: r[k] for k in keep if k != "caption_score"} for r in koniq_b])
    _write(out / "model_b/koniq_caption/p0.json", [{k: r[k] for k in keep if k in r} for r in koniq_b_caption])
    _write(out / "human.json", _human(rng, koniq_a))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
