"""The paper's self-consistency effect at toy scale: the demo recipe trained with and without the
self-consistency reward (same seeds, same steps, same data), evaluated on the demo's set (a)
(new crops of the training photos, greedy).

  python benchmarks/self_consistency.py [--seeds 0 1 2] [--out runs/ablation] [--set KEY=VALUE ...]

Prints per arm and seed the image-conditioned and caption-only SRCC / PLCC and their gap (image
minus caption only: how much of the rating the caption alone fails to carry), then the mean over
seeds and the seed-to-seed spread, beside the paper's figures recomputed from the authors'
released KonIQ outputs (`v11` without, `v13` with the reward). Each run is `jaxbiqa demo` with
`rewards.weights.self_consistency` set to 1 (the recipe's) or 0; finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from jaxbiqa.demo import run_demo

# KonIQ test, gap image - caption only (PLCC, SRCC): as the paper states it (method.md 7), and
# recomputed with plain scipy from the authors' released outputs (../shared/data/README.md: v11, v13)
PAPER_GAPS = {"without": (0.061, 0.080), "with": (0.017, 0.026)}
RELEASED_GAPS = {"without": (0.920 - 0.856, 0.907 - 0.825), "with": (0.917 - 0.898, 0.905 - 0.879)}
ARMS = {"with": 1.0, "without": 0.0}


def run_arm(out: Path, arm: str, seed: int, overrides: list[str]) -> dict[str, float]:
    folder = out / f"{arm}_seed{seed}"
    result = run_demo(folder, overrides=(f"seed={seed}", f"rewards.weights.self_consistency={ARMS[arm]}",
                                         *overrides), progress=False)
    columns = result.summary["figures"]["in_distribution"]
    image, caption = columns["overall_score"], columns["caption_score"]
    return {"image_srcc": image["srcc"], "image_plcc": image["plcc"], "caption_srcc": caption["srcc"],
            "caption_plcc": caption["plcc"], "gap_srcc": image["srcc"] - caption["srcc"],
            "gap_plcc": image["plcc"] - caption["plcc"],
            "score_reward_last": result.summary["rewards"].get("reward/score", {}).get("last")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "ablation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    results = {arm: [run_arm(args.out, arm, seed, args.overrides) for seed in args.seeds] for arm in ARMS}
    keys = ("image_srcc", "image_plcc", "caption_srcc", "caption_plcc", "gap_srcc", "gap_plcc")
    print(f"set (a), greedy, seeds {args.seeds}")
    print(f"{'arm':<9}{'seed':>5}" + "".join(f"{k:>14}" for k in keys))
    for arm, runs in results.items():
        for seed, row in zip(args.seeds, runs):
            print(f"{arm:<9}{seed:>5}" + "".join(f"{row[k]:>14.3f}" for k in keys))
        means = [statistics.fmean(r[k] for r in runs) for k in keys]
        print(f"{arm:<9}{'mean':>5}" + "".join(f"{v:>14.3f}" for v in means))
        if len(runs) > 1:
            spreads = [statistics.stdev(r[k] for r in runs) for k in keys]
            print(f"{arm:<9}{'sd':>5}" + "".join(f"{v:>14.3f}" for v in spreads))
    for arm in ARMS:
        (plcc, srcc), (plcc2, srcc2) = PAPER_GAPS[arm], RELEASED_GAPS[arm]
        print(f"Qwen2.5-VL-7B on KonIQ, {arm} self-consistency: gap PLCC {plcc:.3f}, SRCC {srcc:.3f} (paper); "
              f"{plcc2:.3f}, {srcc2:.3f} (released outputs)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps({"seeds": args.seeds, "results": results,
                                                        "paper_gaps": PAPER_GAPS,
                                                        "released_gaps": RELEASED_GAPS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
