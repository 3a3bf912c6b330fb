"""Peak memory and time of NT-Xent loss + gradients per device: plain vs chunked, against global batch.

    python benchmarks/chunked_nt_xent.py --devices 8 --batches 1024,4096,16384,65536 --logits-mb 64

Memory is XLA's compiled memory analysis of the per-replica program (temporaries + outputs, no
arrays allocated), so batches far beyond this machine's RAM can be measured; time is the median of
a few executions, measured up to --time-up-to. On CPU the devices are simulated (one process).
The chunk size is the largest power of two whose [2n, chunk] fp32 logits fit in --logits-mb.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (ignored on GPU/TPU)")
    parser.add_argument("--batches", default="1024,4096,16384,65536", help="global batch sizes")
    parser.add_argument("--dim", type=int, default=128, help="embedding width (SimCLR: 128)")
    parser.add_argument("--logits-mb", type=float, default=64.0, help="per-device logits budget of a chunk")
    parser.add_argument("--time-up-to", type=int, default=8192, help="largest global batch to execute")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def chunk_for(local_anchors: int, logits_mb: float) -> int:
    chunk = 1
    while 2 * chunk * local_anchors * 4 <= logits_mb * 2**20:
        chunk *= 2
    return chunk


def main() -> None:
    args = parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from sslx import losses, parallel

    mesh = parallel.make_mesh()
    sharding = NamedSharding(mesh, P(parallel.BATCH_AXIS))

    def compiled(global_batch: int, chunk_size: int):
        def per_replica(z1, z2):
            def loss(z1, z2):
                out = losses.nt_xent(z1, z2, temperature=0.1, axis_name=parallel.BATCH_AXIS, chunk_size=chunk_size)
                return jax.lax.pmean(out.loss, parallel.BATCH_AXIS)
            return jax.value_and_grad(loss, argnums=(0, 1))(z1, z2)

        spec = jax.ShapeDtypeStruct((global_batch, args.dim), jnp.float32, sharding=sharding)
        fn = jax.jit(jax.shard_map(per_replica, mesh=mesh, in_specs=(P(parallel.BATCH_AXIS),) * 2,
                                   out_specs=(P(), (P(parallel.BATCH_AXIS),) * 2)))
        return fn.lower(spec, spec).compile()

    def seconds(executable, global_batch: int) -> float:
        rng = np.random.default_rng(0)
        z = [jax.device_put(rng.normal(size=(global_batch, args.dim)).astype(np.float32), sharding) for _ in "12"]
        jax.block_until_ready(executable(*z))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(executable(*z))
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    print(f"{mesh.size} {jax.devices()[0].platform} devices, d={args.dim}, chunk logits budget "
          f"{args.logits_mb:g} MB/device\n")
    print("| global batch | anchors/device | chunk | plain logits MB | plain peak MB | chunked peak MB "
          "| plain ms | chunked ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for global_batch in (int(b) for b in args.batches.split(",")):
        anchors = 2 * global_batch // mesh.size
        chunk = min(chunk_for(anchors, args.logits_mb), 2 * global_batch)
        row = [global_batch, anchors, chunk, anchors * 2 * global_batch * 4 / 2**20]
        executables = [compiled(global_batch, 0), compiled(global_batch, chunk)]
        for executable in executables:
            memory = executable.memory_analysis()
            row.append((memory.temp_size_in_bytes + memory.output_size_in_bytes) / 2**20)
        for executable in executables:
            row.append(seconds(executable, global_batch) * 1e3 if global_batch <= args.time_up_to else None)
        print("| " + " | ".join("-" if v is None else f"{v:,.0f}" if isinstance(v, int) else f"{v:,.1f}"
                                for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
