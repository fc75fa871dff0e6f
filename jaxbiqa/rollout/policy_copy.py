"""The rollout's own copy of the policy (`rollout.policy_layout`): its parameters in the compute
dtype, laid out for decoding rather than for the update, made from the master weights by one
jitted cast-and-reshard before each rollout (so, after each update).

Why: the update keeps float32 master weights sharded for FSDP (`embed` over `fsdp`). Decoding
straight from them would all-gather and cast every layer at every decode step of a loop that is
bound by memory traffic; the copy pays that once per rollout. Layouts:
* "training": the update's sharding, cast to the compute dtype;
* "tensor": split over the `tensor` mesh axis only (tensor parallel, within a host), whole on the
  `data` and `fsdp` axes, which then hold batch rows only;
* "replicated": the whole policy on every device: decoding is purely data parallel.
Activations keep the run's rules. With the compute dtype equal to the parameter dtype every layout
decodes the same tokens as the training parameters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxbiqa.sharding import LogicalRules, state_shardings

LAYOUTS = ("training", "tensor", "replicated")


def layout_rules(layout: str, rules: LogicalRules) -> LogicalRules:
    """The rules that place the copy's parameters: `rules` with only the mesh axes `layout` keeps."""
    if layout not in LAYOUTS:
        raise ValueError(f"rollout.policy_layout {layout!r}: expected one of {LAYOUTS}")
    if layout == "training":
        return rules
    kept = ("tensor",) if layout == "tensor" else ()
    out = []
    for name, axes in rules:
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a in kept)
        out.append((name, axes[0] if len(axes) == 1 else (axes or None)))
    return tuple(out)


def _cast_tree(state: nnx.State, dtype: jnp.dtype) -> nnx.State:
    return jax.tree.map(lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, state)


class PolicyCopy:
    """`copy(model) -> model`: the rollout's copy of a policy (see the module docstring).

    The jitted cast-and-reshard is built for the first policy it is given; every later copy has
    the same shardings, so neither it nor the rollout compiles again. Where there is nothing to
    change (no mesh or the training layout, and the parameters already in the compute dtype) the
    policy itself is returned: no second copy in memory.
    """

    def __init__(self, layout: str, dtype: str | jnp.dtype, mesh: Mesh | None, rules: LogicalRules):
        self.layout, self.dtype, self.mesh = layout, jnp.dtype(dtype), mesh
        self.rules = layout_rules(layout, rules)
        self._copy = None

    def __call__(self, model: nnx.Module) -> nnx.Module:
        graphdef, state = nnx.split(model)
        floating = {leaf.dtype for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating)}
        if floating <= {self.dtype} and (self.mesh is None or self.layout == "training"):
            return model
        if self._copy is None:
            shardings = None if self.mesh is None else state_shardings(state, self.mesh, self.rules)
            self._copy = jax.jit(functools.partial(_cast_tree, dtype=self.dtype), out_shardings=shardings)
        return nnx.merge(graphdef, self._copy(state))

    def compile_count(self) -> int:
        return 0 if self._copy is None else self._copy._cache_size()
