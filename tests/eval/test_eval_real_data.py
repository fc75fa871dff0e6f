"""The authors' released predictions: reproduce the reference table of the shared data README."""

import functools
import json
import tempfile
from pathlib import Path

import pytest

from jaxbiqa.cli import main

# model -> dataset -> (N, image PLCC/SRCC, caption+think PLCC/SRCC or None, caption-only PLCC/SRCC),
# copied from the README of the shared reference data (|r| for CSIQ).
README_TABLE = {
    "v11": {
        "csiq": (866, (0.687, 0.634), (0.582, 0.535), (0.583, 0.535)),
        "livew": (1169, (0.878, 0.851), (0.779, 0.776), (0.772, 0.771)),
        "koniq": (3015, (0.920, 0.907), (0.878, 0.849), (0.856, 0.825)),
    },
    "v13": {
        "csiq": (866, (0.704, 0.647), (0.672, 0.620), (0.665, 0.621)),
        "livew": (1169, (0.874, 0.843), (0.838, 0.815), (0.829, 0.812)),
        "koniq": (3015, (0.917, 0.905), None, (0.898, 0.879)),
    },
}


@functools.cache
def _report(shared: Path) -> dict:
    """One CLI run over v11 and v13 with the human texts, shared by the tests below."""
    root = shared / "released-predictions"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        argv = ["eval-predictions", str(root / "v11"), str(root / "v13"),
                "--human", str(shared / "q-reasoning" / "human_test.json"), "--json", str(out)]
        assert main(argv) == 0
        return {m["label"]: m["datasets"] for m in json.loads(out.read_text())["models"]}


@pytest.mark.parametrize("model", ["v11", "v13"])
def test_readme_table_is_reproduced(shared_data, model):
    datasets = _report(shared_data)[model]
    assert set(datasets) == set(README_TABLE[model])
    for name, (n, image, reasoning, caption) in README_TABLE[model].items():
        columns = datasets[name]["columns"]
        assert datasets[name]["lower_is_better"] == (name == "csiq")
        for column, want in (("overall_score", image), ("reasoning_score", reasoning), ("caption_score", caption)):
            if want is None:
                assert column not in columns
                continue
            got = columns[column]
            assert (got["n"], got["n_invalid"]) == (n, 0)
            assert (round(got["plcc"], 3), round(got["srcc"], 3)) == want, (model, name, column)


def test_rouge1_against_human_test(shared_data):
    report = _report(shared_data)
    for model in ("v11", "v13"):
        alignment = report[model]["koniq"]["alignment"]
        assert alignment["n"] == 180 and alignment["n_no_caption"] == 0
        assert 0.0 < alignment["precision"] < 1.0 and 0.0 < alignment["recall"] < 1.0
        print(model, "ROUGE-1 P/R/F", alignment["precision"], alignment["recall"], alignment["f"])
        assert report[model]["csiq"]["alignment"]["n"] == 0  # no human texts for CSIQ images
