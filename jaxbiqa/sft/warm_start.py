"""One warm-start step: cross-entropy on reference completions written from each record
(`jaxbiqa.rl.references`), the prompt masked; with `pass2` the same step also teaches pass 2 (the
caption-only prompt -> the reference's think + answer), which a model trained from scratch cannot
do otherwise. Rows are built on the host in the update step's layout (`jaxbiqa.rl.batches`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxbiqa import distributed
from jaxbiqa.config import Config
from jaxbiqa.distributed import Placement
from jaxbiqa.parse import split_caption
from jaxbiqa.rl import batches
from jaxbiqa.rl.references import reference_completion
from jaxbiqa.rl.step import ROW_AXIS, TrainState, UpdateStep, dropout_key
from jaxbiqa.rollout import Rollout


class WarmStartStep:
    """`step(state, data, key) -> (state, record)` for one global data batch.

    `model` gives the structure the rows are laid out for (its config; abstract is enough);
    `update` is the SFT `UpdateStep`; `encode` tokenizes without special tokens; `render` is the
    pass-2 prompt of a caption (`Processor.pass2_text`).
    """

    def __init__(self, config: Config, *, model, rollout: Rollout, update: UpdateStep, placement: Placement,
                 plans: batches.VisionPlans, encode: Callable[[str], list[int]], render: Callable[[str], str],
                 eos_ids: Sequence[int], pass2: bool):
        self.config, self.model, self.rollout, self.update = config, model, rollout, update
        self.placement, self.plans = placement, plans
        self.encode, self.render, self.eos_ids, self.pass2 = encode, render, tuple(eos_ids), pass2

    def batch(self, data: Mapping[str, np.ndarray]) -> tuple[dict, dict, int]:
        """(update rows, unsplit entries, completions cut) of a data batch."""
        rollout, model = self.rollout, self.model
        prompts = batches.prompt_batch(lambda *a: rollout.prepare(model, *a), data)
        completions = [reference_completion(r) for r in batches.record_rows(data)]
        ids, valid, cut = batches.encode_completions(completions, self.encode, self.eos_ids[0],
                                                     rollout.config.pass1.max_new_tokens)
        batch = batches.sft_pass1(prompts, ids, valid, self.eos_ids, data["pixel_values"])
        if self.pass2:
            captions = [split_caption(c, until=rollout.config.caption_until) or "" for c in completions]
            # a caption the rollout could not take (longer than max_caption) is not taught either
            captions = [c if len(self.encode(c)) <= rollout.max_caption else "" for c in captions]
            prompts2 = [self.encode(self.render(c)) for c in captions]
            targets = [c[len(cap):] for c, cap in zip(completions, captions)]
            ids2, valid2, cut2 = batches.encode_completions(targets, self.encode, self.eos_ids[0],
                                                            rollout.config.pass2.max_new_tokens)
            valid2 *= np.asarray([bool(c) for c in captions], np.int32)[:, None]
            rows2 = batches.text_rows(model.config, prompts2, ids2, valid2, self.eos_ids, rollout.pass2_width,
                                      rollout.config.pass2.pad_token_id)
            batch = batches.add_pass2(batch, rows2)
            cut += cut2 + sum(not c for c in captions)
        grid = batches.same_image_grid(data["image_grid_thw"])
        rows = len(completions)
        unsplit = {"vision_plan": self.plans(grid, batches.micro_rows(rows, self.config.sft.optim))}
        return batch, unsplit, cut

    def __call__(self, state: TrainState, data: Mapping[str, np.ndarray],
                 key: jax.Array) -> tuple[TrainState, dict[str, Any]]:
        batch, unsplit, cut = self.batch(data)
        state, metrics = self.update(state, self.placement.global_batch(batch, ROW_AXIS), dropout_key(self.config, key),
                                     unsplit)
        tokens = int(np.sum(batch["attention_mask"])) + int(np.sum(batch.get("pass2_attention_mask", 0)))
        record = {**{k: float(v) for k, v in distributed.fetch(metrics).items()}, "completions_cut": cut,
                  "compile_count/update": self.update.compile_count, "_tokens": tokens}
        return state, record
