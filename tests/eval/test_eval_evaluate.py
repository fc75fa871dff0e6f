"""Batched evaluation (`jaxbiqa.eval.evaluate`) on a tiny random model and a small synthetic set:
the fused program agrees with the rollout engine, shapes stay static across a padded last batch,
the predictions follow the JSON-lines schema and `eval-predictions` reads them back to the same
metrics, sampled decoding is reproducible from its seed, and images of two shapes keep their
proportions with one compiled program per shape."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from eval_setup import TEST_IMAGES, model_folder, overrides, read_jsonl
from PIL import Image
from scipy import stats

from jaxbiqa.cli import main
from jaxbiqa.config import EvalSection, load_config
from jaxbiqa.eval.evaluate import (
    BatchOutput, Evaluator, PredictionWriter, completion_parts, eval_pipeline, evaluate,
    evaluate_qalign, fill_batch, prediction_rows)
from jaxbiqa.eval.qalign import qalign_scores
from jaxbiqa.models.qwen2_5_vl import ModelConfig, Qwen2_5_VLForConditionalGeneration, TextConfig, VisionConfig
from jaxbiqa.processing import Processor, build_qwen2_5_tokenizer, load_tokenizer, make_image_processor
from jaxbiqa.rewards import split_caption
from jaxbiqa.rollout import Rollout


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, model, processor): a tiny model with N(0, 0.15^2) weights (peaked logits that depend on
    the image) that writes the <think> and <answer> tokens often, so that some completions have a
    caption and the pass-2 paths are exercised."""
    from jaxbiqa.models.build import build_policy, build_processor

    root = tmp_path_factory.mktemp("eval")
    config = load_config(None, overrides(model_folder(root), root / "synthetic"))
    model = build_policy(config.model, seed=0)
    processor = build_processor(config.model, config.data)
    rng = np.random.default_rng(0)
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        noise = 0.15 * rng.standard_normal(variable.get_value().shape)
        variable.set_value(jnp.asarray(1.0 + noise if path[-1] == "scale" else noise, variable.get_value().dtype))
    kernel = model.lm_head.kernel
    for tag in ("<think>", "<answer>"):
        tag_id = processor.tokenizer.convert_tokens_to_ids(tag)
        kernel[...] = kernel[...].at[:, tag_id].multiply(3.0)
    return config, model, processor


def first_batch(config, processor):
    return next(iter(eval_pipeline(config.data, processor)))


def test_sampling_settings_are_the_authors_or_greedy(setup):
    config = setup[0]
    sampled = EvalSection().sampling(config.rollout.pass1)
    assert (sampled.temperature, sampled.top_k, sampled.top_p, sampled.greedy) == (1.0, 50, 0.95, False)
    assert sampled.num_samples == 1 and EvalSection().seed == 42
    assert sampled.stop_strings == config.rollout.pass1.stop_strings
    greedy = EvalSection(decoding="greedy").sampling(config.rollout.pass2)
    assert greedy.greedy and greedy.num_samples == 1
    with pytest.raises(ValueError, match="decoding='beam' is not one of"):
        EvalSection(decoding="beam")


def test_fused_evaluation_matches_the_rollout_engine(setup):
    """Greedy: pass 1 and the caption+think pass 2 (the second half of the fused pass-2 rows) equal
    the engine's two-pass rollout with caption_until="answer"; the caption-only rows are flagged as
    `split_caption` splits the pass-1 texts."""
    config, model, processor = setup
    settings = EvalSection(decoding="greedy", batch_size=4)
    evaluator = Evaluator(processor, config.rollout, model.config.text.vocab_size, settings)
    batch, _ = fill_batch(first_batch(config, processor), 4)
    key = jax.random.key(3)
    out = evaluator(model, evaluator.prepare(model, batch), key)
    assert len(out.pass1_texts) == len(out.caption_texts) == len(out.reasoning_texts) == 4
    assert out.has_caption.tolist() == [split_caption(t, until="think") is not None for t in out.pass1_texts]
    rollout_config = dataclasses.replace(config.rollout, caption_until="answer",
                                         pass1=settings.sampling(config.rollout.pass1),
                                         pass2=settings.sampling(config.rollout.pass2))
    engine = Rollout.from_processor(rollout_config, processor, model.config.text.vocab_size)
    reference = engine(model, evaluator.prepare(model, batch), key)
    assert reference.pass1_texts == out.pass1_texts
    np.testing.assert_array_equal(reference.has_caption, out.has_reasoning)
    assert out.has_reasoning.any()
    kept = [i for i in range(4) if out.has_reasoning[i]]
    assert [reference.pass2_texts[i] for i in kept] == [out.reasoning_texts[i] for i in kept]
    assert [out.caption_texts[i] for i in kept] != [out.reasoning_texts[i] for i in kept]


def test_evaluate_writes_predictions_that_eval_predictions_reads_back(setup, tmp_path, capsys):
    config, model, processor = setup
    settings = EvalSection(batch_size=4)
    result = evaluate(model, processor, eval_pipeline(config.data, processor), tmp_path / "run",
                      rollout=config.rollout, settings=settings)
    rows = read_jsonl(result.predictions)
    assert result.n == len(rows) == TEST_IMAGES  # 6 images: one full batch of 4, one of 2 padded to 4
    # the padded last batch reuses the first batch's program (0 when an earlier test compiled it)
    assert result.metrics["compiles"] <= 1
    assert len({r["image"] for r in rows}) == TEST_IMAGES and {r["dataset"] for r in rows} == {"synthetic"}
    for row in rows:
        assert {"gt_score", "overall_score", "reasoning_score", "caption_score", "perception_text"} <= set(row)
        assert 1.0 <= row["gt_score"] <= 5.0 and row["gt_score"] == row["mos_norm"]
        has_caption = split_caption(row["perception_text"], until="think") is not None
        assert ("caption_answer_text" in row) == has_caption
        assert has_caption or row["caption_score"] is None
    assert any("caption_answer_text" in r for r in rows), "some sampled completions should have a caption"
    human = json.loads(result.human_file.read_text())
    assert len(human) == TEST_IMAGES and all(h["description"].startswith("This is a crop") for h in human)

    out = tmp_path / "read_back.json"
    assert main(["eval-predictions", str(result.predictions), "--human", str(result.human_file), "--logistic",
                 "--json", str(out)]) == 0
    read_back = json.loads(out.read_text())["models"][0]["datasets"]
    assert read_back == result.metrics["datasets"]
    assert set(read_back["synthetic"]["columns"]) == {"overall_score", "reasoning_score", "caption_score"}
    assert read_back["synthetic"]["alignment"]["n"] == TEST_IMAGES
    capsys.readouterr()

    again = evaluate(model, processor, eval_pipeline(config.data, processor), tmp_path / "again",
                     rollout=config.rollout, settings=settings)
    assert again.predictions.read_text() == result.predictions.read_text()  # seed 42 reproduces the samples
    other = evaluate(model, processor, eval_pipeline(config.data, processor), tmp_path / "other",
                     rollout=config.rollout, settings=dataclasses.replace(settings, seed=7, max_examples=5))
    other_rows = read_jsonl(other.predictions)
    assert other.n == len(other_rows) == 5 and other.metrics["compiles"] == 0
    assert [r["perception_text"] for r in other_rows] != [r["perception_text"] for r in rows[:5]]


def test_single_pass_writes_the_image_rating_only(setup, tmp_path):
    config, model, processor = setup
    result = evaluate(model, processor, eval_pipeline(config.data, processor), tmp_path,
                      rollout=config.rollout, settings=EvalSection(batch_size=4, two_pass=False, max_examples=4))
    rows = read_jsonl(result.predictions)
    assert len(rows) == 4 and not any("caption_score" in r or "reasoning_score" in r for r in rows)
    assert list(result.metrics["datasets"]["synthetic"]["columns"]) == ["overall_score"]


def test_a_stopped_evaluation_keeps_its_rows_as_partial(setup, tmp_path):
    """A signal during the evaluation (the trainer's guard answers `should_stop`): the rows so far
    are kept under a name that says so, and no predictions or metrics file claims a whole run."""
    config, model, processor = setup
    with pytest.raises(InterruptedError, match="after 4 records"):
        evaluate(model, processor, eval_pipeline(config.data, processor), tmp_path, rollout=config.rollout,
                 settings=EvalSection(batch_size=4, two_pass=False, max_examples=8), should_stop=lambda: True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl.partial"]
    assert len(read_jsonl(tmp_path / "predictions.jsonl.partial")) == 4


def test_images_of_two_shapes_keep_their_proportions_and_compile_once_each(setup, tmp_path):
    """Square and 4:3 crops of real photos in one evaluation: each is resized at its own proportions
    (grids 8x8 and 6x8 patches at 12,544 pixels), batches hold one shape each (a short batch where
    the shape changes), and the program compiles once per shape, never again."""
    skimage_data = pytest.importorskip("skimage.data")
    config, model, processor = setup
    photos = {"astronaut": skimage_data.astronaut(), "coffee": skimage_data.coffee(), "chelsea": skimage_data.chelsea(),
              "rocket": skimage_data.rocket()}
    order = [("astronaut", 1), ("coffee", 1), ("chelsea", 1), ("coffee", 4 / 3), ("rocket", 4 / 3),
             ("chelsea", 4 / 3), ("rocket", 1)]
    with open(tmp_path / "index.jsonl", "w") as index:
        for i, (name, aspect) in enumerate(order):
            pixels = photos[name]
            height = min(pixels.shape[0], int(pixels.shape[1] / aspect))
            crop = Image.fromarray(pixels[:height, : int(height * aspect)])
            crop.resize((224, 168) if aspect > 1 else (168, 168)).save(tmp_path / f"{i}_{name}.png")
            index.write(json.dumps({"image": f"{i}_{name}.png", "dataset": "photos", "mos": 1 + i / 2}) + "\n")
    data = dataclasses.replace(config.data, eval=(f"jsonl:{tmp_path / 'index.jsonl'}",), eval_split="",
                               max_pixels=12_544, global_batch_size=2)
    grids = {str(i): g.tolist() for b in eval_pipeline(data, processor) for i, g in zip(b["id"], b["image_grid_thw"])}
    square, landscape = [1, 8, 8], [1, 6, 8]  # 112 x 112 and 112 wide x 84 high
    assert list(grids.values()) == [square] * 3 + [landscape] * 3 + [square]
    settings = EvalSection(decoding="greedy", batch_size=2)
    first = evaluate(model, processor, eval_pipeline(data, processor), tmp_path / "first", rollout=config.rollout,
                     settings=settings)
    assert [r["image"] for r in read_jsonl(first.predictions)] == list(grids)
    assert first.metrics["compiles"] == 2  # 5 batches (2 short ones), one program per shape
    again = evaluate(model, processor, eval_pipeline(data, processor), tmp_path / "again", rollout=config.rollout,
                     settings=settings)
    assert again.metrics["compiles"] == 0 and again.predictions.read_text() == first.predictions.read_text()


def _batch(ids, mos, dataset="set"):
    n = len(ids)
    text = np.asarray(["a red flower on a green leaf"] * n)
    return {"id": np.asarray(ids), "dataset": np.asarray([dataset] * n), "mos": np.asarray(mos, np.float32),
            "mos_norm": np.asarray(mos, np.float32), "description": text, "good_aspect": np.asarray([""] * n),
            "bad_aspect": np.asarray([""] * n)}


def _completion(rating: float | None, caption: str = "a red flower") -> str:
    answer = f'{{"rating": {rating:.2f}}}' if rating is not None else "none"
    return f"<caption>\n{caption}\n</caption>\n<think>\nsharp\n</think>\n<answer>\n{answer}\n</answer>"


def test_metrics_of_parseable_ratings_read_back_the_same(tmp_path):
    """Rows from hand-written completions: the figures equal scipy's on the parsed ratings, and
    `eval-predictions` computes the same from the written file; unparsable or skipped pass-2
    outputs are null; a record without a target goes to its own file and counts for ROUGE only."""
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 12)
    image = np.clip(mos + rng.normal(0, 0.4, 12), 1, 5)
    caption = np.clip(mos + rng.normal(0, 1.0, 12), 1, 5)
    settings = EvalSection()
    writer = PredictionWriter(tmp_path, settings)
    ids = [f"img{i}.png" for i in range(12)]
    pass1 = [_completion(r) for r in image]
    pass1[3] = _completion(None)  # unparsable pass-1 output
    caption_texts = [_completion(r, caption="").split("</caption>\n", 1)[1] for r in caption]
    has_caption = np.ones(12, bool)
    has_caption[5] = False  # pass 2 skipped: no caption
    out = BatchOutput(pass1, caption_texts, caption_texts, has_caption, has_caption, False)
    for record in prediction_rows(_batch(ids, mos), out, 12, strict=False):
        writer.add(record)
    blank = BatchOutput([_completion(3.0, caption="a red car")], None, None, None, None, False)
    for record in prediction_rows(_batch(["no_target.png"], [math.nan], dataset="texts"), blank, 1, strict=False):
        writer.add(record)
    result = writer.finish()

    rows = read_jsonl(result.predictions)
    assert len(rows) == 12 and rows[3]["overall_score"] is None
    assert rows[5]["caption_score"] is None and "caption_answer_text" not in rows[5]
    assert rows[4]["caption_answer_text"] == caption_texts[4] and rows[4]["reasoning_text"] == caption_texts[4]
    assert read_jsonl(tmp_path / "predictions_no_target.jsonl")[0]["image"] == "no_target.png"
    assert result.metrics["n"] == 13 and result.metrics["n_without_target"] == 1
    texts_only = result.metrics["datasets"]["texts"]
    assert texts_only["columns"] == {} and texts_only["alignment"]["n"] == 1
    assert texts_only["alignment"]["precision"] == pytest.approx(2 / 3)  # "a", "red" of "a red car"

    entry = result.metrics["datasets"]["set"]
    keep = np.arange(12) != 3
    pred = np.round(image, 2)
    assert entry["columns"]["overall_score"]["n_invalid"] == 1
    assert entry["columns"]["overall_score"]["srcc"] == pytest.approx(
        stats.spearmanr(pred[keep], mos[keep]).statistic, abs=1e-6)
    assert entry["columns"]["caption_score"]["n_invalid"] == 1
    assert entry["gap"]["caption_score"]["plcc"] > 0  # the noisier caption rating tracks the target less
    assert entry["alignment"]["n"] == 12 and entry["alignment"]["precision"] == pytest.approx(1.0)

    out_json = tmp_path / "read_back.json"
    assert main(["eval-predictions", str(result.predictions), "--human", str(result.human_file), "--logistic",
                 "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["models"][0]["datasets"] == {"set": entry}


def test_fill_batch_and_completion_parts():
    batch = {"a": np.arange(3), "b": np.asarray(["x", "y", "z"])}
    padded, rows = fill_batch(batch, 5)
    assert rows == 3 and padded["a"].tolist() == [0, 1, 2, 2, 2] and padded["b"].tolist()[-1] == "z"
    with pytest.raises(ValueError, match="exceeds the evaluation batch size 2"):
        fill_batch(batch, 2)
    parts = completion_parts(_completion(3.5, caption="blurry cat"))
    assert parts == {"caption": "blurry cat", "reasoning": "sharp", "rating": 3.5}
    bare = completion_parts("a dark photo <think> too dark </think><answer>2</answer>")
    assert bare["caption"] == "a dark photo" and bare["reasoning"] == "too dark" and bare["rating"] == 2.0
    assert math.isnan(completion_parts("nothing")["rating"]) and completion_parts("nothing")["caption"] is None


def test_token_ids_outside_the_vocabulary_are_reported(setup):
    config, model, processor = setup
    rollout = dataclasses.replace(config.rollout, pass2=config.rollout.pass2.replace(pad_token_id=151643))
    with pytest.raises(ValueError, match=r"rollout.pass2: token ids \[151643\].*outside the model's vocabulary"):
        Evaluator(processor, rollout, model.config.text.vocab_size)



def test_probability_scoring_mode(setup, tmp_path):
    """`evaluate_qalign` (eval --mode qalign) on the real offline Qwen tokenizer: the written scores are
    `qalign_scores` of the same decoded images, and eval-predictions reads back the same metrics."""
    config = setup[0]
    processor = Processor(load_tokenizer(build_qwen2_5_tokenizer(tmp_path / "qwen")),
                          make_image_processor(min_pixels=56 * 56, max_pixels=56 * 56))
    text = TextConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, mrope_section=(1, 1, 2), rope_theta=10000.0)
    vision = VisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                          window_size=56, fullatt_block_indexes=(0,))
    model = Qwen2_5_VLForConditionalGeneration(ModelConfig(text=text, vision=vision), rngs=nnx.Rngs(0))
    model.lm_head.kernel.set_value(model.lm_head.kernel[...] * 40.0)  # level probabilities far from uniform

    result = evaluate_qalign(model, processor, eval_pipeline(config.data), tmp_path / "q",
                             settings=EvalSection(batch_size=4))
    rows = read_jsonl(result.predictions)
    images = [image for batch in eval_pipeline(config.data) for image in batch["image"]]
    direct = qalign_scores(model, processor, images, batch_size=4)
    assert len(rows) == TEST_IMAGES and result.metrics["mode"] == "qalign"
    np.testing.assert_allclose([r["overall_score"] for r in rows], direct, rtol=1e-6)
    assert np.ptp(direct) > 0.01 and all(1.0 <= s <= 5.0 for s in direct)
    assert main(["eval-predictions", str(result.predictions), "--logistic", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["models"][0]["datasets"] == result.metrics["datasets"]
