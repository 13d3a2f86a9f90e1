"""GPU kernel time by kind and the top kernels of a profiler trace (an ``.xplane.pb``,
such as the one gpu_bench.py leaves in $OUT).

  python benchmarks/profile_summary.py train_bfloat16_batch64.xplane.pb [--top=30] [--steps=2]

Reading the trace needs TensorFlow's protobuf definitions (``pip install tensorflow-cpu``).
"""

import collections

from absl import app, flags

flags.DEFINE_integer("top", 30, "Kernels to list.")
flags.DEFINE_integer("steps", 2, "Steps in the trace (times are divided by it).")
FLAGS = flags.FLAGS


def kind(name: str) -> str:
    lowered = name.lower()
    if "sdpa" in lowered or "cudnn::fusion" in lowered:
        return "attention"
    for word in ("fprop", "dgrad", "wgrad"):
        if word in lowered:
            return f"convolution {word}"
    if "xmma" in lowered or "gemm" in lowered or "nvjet" in lowered or "cutlass" in lowered:
        return "matrix product"
    if "memcpy" in lowered or "memset" in lowered:
        return "copy / memset"
    if "transpose" in lowered:
        return "transpose fusion"
    if "reduce" in lowered:
        return "reduction fusion"
    return "other fusion"


def main(argv):
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as err:
        raise SystemExit(f"{err}: install tensorflow-cpu to read xplane traces") from err
    if len(argv) != 2:
        raise SystemExit("usage: profile_summary.py TRACE.xplane.pb")
    space = xplane_pb2.XSpace()
    with open(argv[1], "rb") as f:
        space.ParseFromString(f.read())
    per_kernel, launches = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if "/device:GPU" not in plane.name:
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                per_kernel[names[event.metadata_id]] += event.duration_ps
                launches[names[event.metadata_id]] += 1
    if not per_kernel:
        raise SystemExit(f"{argv[1]} holds no GPU kernels")
    total = sum(per_kernel.values())
    per_kind, kind_launches = collections.Counter(), collections.Counter()
    for name, ps in per_kernel.items():
        per_kind[kind(name)] += ps
        kind_launches[kind(name)] += launches[name]
    ms = lambda ps: ps / 1e9 / FLAGS.steps
    print(f"GPU busy {ms(total):.2f} ms per step, {sum(launches.values()) // FLAGS.steps} kernels")
    for name, ps in per_kind.most_common():
        share = 100 * ps / total
        count = kind_launches[name] // FLAGS.steps
        print(f"{name:22s} {ms(ps):7.2f} ms {share:5.1f} %  {count:5d} kernels")
    print()
    for name, ps in per_kernel.most_common(FLAGS.top):
        print(f"{ms(ps):7.3f} ms {launches[name] // FLAGS.steps:4d}×  {name[:100]}")


if __name__ == "__main__":
    app.run(main)
