"""One process of a multi-process check, started by `launch/local_cluster.sh`:

    launch/local_cluster.sh -n 2 -d 4 -- python tests/scale/cluster_worker.py OUT_DIR

Every process starts the runtime from the JAXBIQA_* variables, feeds its own rows of a global
batch, runs a sharded loss and gradient over all processes' devices and a cross-process psum,
gathers host rows (numbers and strings) and device arrays back to every process, and saves what
it sees to OUT_DIR/process_<i>.npz; only the main process writes report.json.
`compute` is also what the single-process test runs, on one process's 8 devices.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jaxbiqa import distributed
from jaxbiqa.config import RuntimeSection
from jaxbiqa.sharding import logical_to_spec

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
ROWS, FEATURES, HIDDEN = 16, 6, 8


def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((ROWS, FEATURES), dtype=np.float32),
            rng.standard_normal((FEATURES, HIDDEN), dtype=np.float32))


def local_rows(mesh: jax.sharding.Mesh, rows: int) -> slice:
    """The block of batch rows that this process's devices hold."""
    spec = logical_to_spec(("batch", None), mesh_axes=mesh.axis_names)
    index = NamedSharding(mesh, spec).addressable_devices_indices_map((rows, FEATURES))
    starts = sorted({(i[0].start or 0, i[0].stop or rows) for i in index.values()})
    return slice(starts[0][0], starts[-1][1])


def compute(mesh: jax.sharding.Mesh, x: jax.Array, w: np.ndarray) -> dict[str, jax.Array]:
    """Loss and gradient of a tiny layer with weights split over fsdp x tensor, and a psum of the rows."""
    w = jax.device_put(w, NamedSharding(mesh, logical_to_spec(("embed", "mlp"), mesh_axes=mesh.axis_names)))

    def loss(w, x):
        return jnp.mean(jnp.tanh(x @ w) ** 2)

    value, grad = jax.jit(jax.value_and_grad(loss))(w, x)
    batch = logical_to_spec(("batch", None), mesh_axes=mesh.axis_names)
    total = jax.jit(jax.shard_map(lambda b: jax.lax.psum(b.sum(0), batch[0]), mesh=mesh,
                                  in_specs=batch, out_specs=PartitionSpec()))(x)
    return {"loss": value, "grad": grad, "psum": total}


def main(out: Path) -> None:
    mesh = distributed.setup(RuntimeSection(mesh=MESH)).mesh  # starts the runtime from the JAXBIQA_* variables
    assert jax.process_count() == 2, "expected a multi-process run"
    assert distributed.initialize()  # a second call is a no-op that reports the running runtime
    me = jax.process_index()
    x_full, w = inputs()

    rows = local_rows(mesh, ROWS)
    x = distributed.global_batch({"x": x_full[rows]}, mesh)["x"]
    results = compute(mesh, x, w)
    gathered = {k: multihost_utils.process_allgather(v, tiled=True) for k, v in results.items()}

    # host rows of different sizes and string widths, in process order, on every process
    host = distributed.gather_rows({"id": np.asarray(["p" * (me + 1)] * (me + 1)),
                                    "value": np.arange(me + 1, dtype=np.float32) + 10 * me})
    ended = distributed.gather_rows(None if me == 1 else {"id": np.asarray(["x"])})
    fetched = distributed.fetch({"x": x, "loss": results["loss"]})  # sharded over both processes / replicated
    placed = distributed.shard_batch({"x": x_full}, mesh)["x"]  # every process holds the whole batch

    # two slices' worth of processes: data across processes (DCN), fsdp x tensor within each
    hybrid = distributed.setup(RuntimeSection(mesh={"fsdp": -1, "tensor": 2}, dcn_mesh={"data": -1})).mesh
    owners = np.vectorize(lambda d: d.process_index)(hybrid.devices)

    np.savez(out / f"process_{me}.npz", x=multihost_utils.process_allgather(x, tiled=True),
             rows=[rows.start, rows.stop],
             hybrid_owners=owners, hybrid_shape=list(hybrid.devices.shape), hybrid_axes=list(hybrid.axis_names),
             process_count=jax.process_count(), device_count=jax.device_count(), **gathered,
             host_id=host["id"], host_value=host["value"], ended=ended is None, fetched_x=fetched["x"],
             fetched_loss=fetched["loss"], placed=multihost_utils.process_allgather(placed, tiled=True),
             placed_spec=str(placed.sharding.spec))
    if distributed.is_main_process():
        (out / "report.json").write_text(json.dumps({"writer": me, "processes": jax.process_count()}))
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
