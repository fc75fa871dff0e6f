"""Peak temporary bytes of the compiled pass-2 prefill at the humaniqa recipe's shapes.

Qwen2.5-VL-7B (float32 master weights, bfloat16 compute and cache, scanned layers) on 8 CPU
devices (fsdp=8, the recipe's mesh), 256 pass-2 rows (64 prompts x G=4), 1024 new tokens. The
program is compiled, not run: the figure is XLA's `memory_analysis().temp_size_in_bytes` per
device. With this tree's engine the prompts are as wide as the caption budget (384) + template and
prefilled at the smallest bucket holding the batch (`bucketed_prefill`, every bucket compiled in);
run under an older tree (e.g. `PYTHONPATH=<main checkout>`) it measures that tree's one-width
prefill at `--width` (pass 1's 1024 new tokens + template) for the comparison. The template length
is an assumption (`--template`, the method's pass-2 prompt is about 60 Qwen tokens).

    .venv/bin/python benchmarks/pass2_memory.py [--width 1090]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxbiqa.config import RolloutSection  # noqa: E402
from jaxbiqa.models.qwen2_5_vl import text_positions  # noqa: E402
from jaxbiqa.models.qwen2_5_vl.size import qwen2_5_vl_7b  # noqa: E402
from jaxbiqa.models.qwen2_5_vl.weights import abstract_model  # noqa: E402
from jaxbiqa.rollout.batch import PromptBatch  # noqa: E402
from jaxbiqa.rollout.sampler import prefill  # noqa: E402
from jaxbiqa.sharding import make_mesh, sharding_for, state_shardings  # noqa: E402

try:
    from jaxbiqa.rollout.engine import bucket_widths, bucketed_prefill  # noqa: E402
except ImportError:  # a tree before pass 2 was sized to its captions
    bucket_widths = bucketed_prefill = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="pass-2 rows (prompts x G x split points)")
    parser.add_argument("--caption-tokens", type=int, default=384, help="the caption budget (rollout.max_caption_tokens)")
    parser.add_argument("--template", type=int, default=64, help="pass-2 template tokens around the caption")
    parser.add_argument("--width", type=int, default=0, help="prompt width of an older tree's one-width prefill "
                        "(default: 1024 + 2 + template, pass 1's budget and a split token's head)")
    parser.add_argument("--buckets", default="128,256")
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--attention", default="blocked", help="model.attention of this tree (dense: the reference)")
    args = parser.parse_args()

    runtime = dict(param_dtype="float32", dtype="bfloat16", remat=True, scan_layers=True)
    if bucketed_prefill is not None:
        runtime["attention"] = args.attention
    config = qwen2_5_vl_7b(**runtime)
    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    section = RolloutSection().pass2.replace(max_new_tokens=args.new_tokens, num_samples=1)
    if bucketed_prefill is not None:
        width = args.caption_tokens + args.template
        widths = bucket_widths(tuple(int(b) for b in args.buckets.split(",")), width)
    else:
        width, widths = args.width or 1024 + 2 + args.template, None
    graphdef, state = nnx.split(abstract_model(config))
    shardings = state_shardings(state, mesh)
    with jax.set_mesh(mesh):
        abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                                      shardings)
        rows_spec = sharding_for((args.rows, width), ("batch", "length"), mesh)
        ids = jax.ShapeDtypeStruct((args.rows, width), jnp.int32, sharding=rows_spec)

        @jax.jit
        def program(state, ids, mask):
            model = nnx.merge(graphdef, state)
            prompts = PromptBatch(ids, mask, text_positions(mask), jnp.zeros(ids.shape[0], jnp.int32))
            if widths is None:
                return prefill(model, prompts, section.max_new_tokens, 1, section.cache_dtype)
            return bucketed_prefill(model, prompts, section, widths)

        compiled = program.lower(abstract_state, ids, ids).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    what = f"buckets {widths}, attention {args.attention}" if widths else "one width (this tree has no buckets)"
    print(f"pass-2 prefill, {args.rows} rows x {width} tokens ({what}), cache {width} + {args.new_tokens} slots, "
          f"fsdp=8: peak temporary {temp / 2**30:.2f} GiB per device")


if __name__ == "__main__":
    main()
