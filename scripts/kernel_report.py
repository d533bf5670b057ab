"""What the Triton kernels compile to on an H100, from a machine without a GPU.

Triton compiles ahead of time for any target, and its wheel bundles NVIDIA's ptxas and
cuobjdump: this compiles each kernel of ngt.model.triton_gravity for sm_90a at every tile
shape its autotuner may pick, as Triton builds it for a run, and prints per shape the
registers a thread uses, its stack (registers spilled), the shared memory, and for each
of the two main loops its machine instructions per (query, key) pair per thread and the
barriers it waits at: the loop over the edge tiles, which the diagonal or the end crosses
and so apply the masks, and the one over the interior tiles, below the diagonal (most of
a long sequence's). Most of these kernels' work is elementwise, a few dozen to a couple
of hundred instructions a pair on the CUDA cores, so fewer of them, no spills and more
resident warps are what a change should show here before a GPU times it. The figures are
for the Triton installed here (the GPU machine's may differ: say which), and no
substitute for timing with ngt.bench.

    python scripts/kernel_report.py                   # ngt_default's switches, bf16 values
    python scripts/kernel_report.py --radius soft --kernels keys
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import ngt.model.triton_gravity as tg
from ngt.config import Mass, Radius

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
KERNELS = {  # name: (kernel, the shapes it runs at, its main loops in source order)
    "fwd": (tg._fwd_kernel, tg._FWD_SHAPES, ("interior", "edge")),
    "keys": (tg._bwd_keys_kernel, tg._KEYS_SHAPES, ("edge", "interior")),
    "queries": (tg._bwd_queries_kernel, (tg._QUERIES_SHAPE,), ("interior", "edge")),
}
OLDEST = (3, 6)  # the Triton whose compile API this is written against (and the GPU machine's)
VALUES = {"V", "OUT", "DO", "DVAL", "O"}  # tensors in the values' dtype; other pointers are float32
POINTERS = {"SEED": "*i64", "ALONE": "*i8"}
SCALARS = {"H": "i32", "L": "i32", "threshold": "i32", "rescale": "fp32"}  # as Triton types L = 512, p = 0.1
INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")


def compile_sass(kernel, shape, switches: dict, values: str, ch: int, dv: int, arch: int) -> tuple[dict, str, int]:
    """(the binary's resources: registers REG and stack bytes STACK, the SASS listing,
    shared memory bytes) for one shape, from the binary Triton builds: its ptxas, its flags."""
    bm, bn, warps, stages = shape
    consts = {"CH": ch, "DV": dv, "BM": bm, "BN": bn, **switches}
    consts = {k: v for k, v in consts.items() if k in kernel.arg_names}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name in SCALARS:
            signature[name] = SCALARS[name]
        else:
            signature[name] = POINTERS.get(name, f"*{values}" if name in VALUES else "*fp32")
        if name not in consts and (name == "L" or signature[name].startswith("*")):
            attrs[(i,)] = [["tt.divisibility", 16]]  # as Triton specializes aligned tensors and L = 512
    compiled = triton.compile(ASTSource(kernel, signature, consts, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps, "num_stages": stages})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp, "k.cubin")
        cubin.write_bytes(compiled.asm["cubin"])
        usage, sass = (subprocess.run([BIN / "cuobjdump", flag, cubin], capture_output=True, text=True, check=True).stdout
                       for flag in ("-res-usage", "-sass"))
    resources = {k: int(v) for k, v in re.findall(r"\b(REG|STACK):(\d+)", usage)}
    return resources, sass, compiled.metadata.shared


def loops(sass: str) -> list[tuple[int, int, collections.Counter]]:
    """The kernel's main loops in the order of the code: (instructions, barriers, opcode
    counts). A loop is the span from a backward branch's target to the branch."""
    body = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(INSTRUCTION.match, sass.splitlines()) if m]
    found = []
    for at, op, operands in body:
        target = re.search(r"0x([0-9a-f]+)", operands) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < at:
            ops = collections.Counter(o for a, o, _ in body if int(target.group(1), 16) <= a <= at)
            found.append((sum(ops.values()), sum(n for o, n in ops.items() if o.startswith("BAR.SYNC")), ops))
    # Short backward branches are retry loops of atomics and the like, not tile loops.
    return [f for f in found if f[0] >= 100]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default="fwd,keys,queries", help=f"any of {','.join(KERNELS)}")
    parser.add_argument("--mass", type=Mass, choices=list(Mass), default=Mass.scores)
    parser.add_argument("--radius", type=Radius, choices=list(Radius), default=Radius.hard)
    parser.add_argument("--no-rsqrt", action="store_true")
    parser.add_argument("--no-dropout", action="store_true")
    parser.add_argument("--values", choices=["bf16", "fp32"], default="bf16", help="bf16 as under AMP")
    parser.add_argument("--ch", type=int, default=16, help="coordinate width per head (w3_25m: 16)")
    parser.add_argument("--dv", type=int, default=64, help="value width per head (w3_25m: 64)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: H100, H200)")
    parser.add_argument("--top", type=int, default=0, help="also list the N commonest opcodes of each loop")
    args = parser.parse_args()
    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < OLDEST:
        sys.exit(f"kernel_report needs Triton {'.'.join(map(str, OLDEST))} or later (its compile API); "
                 f"this is {triton.__version__}")
    switches = {"MASS_SCORES": args.mass == Mass.scores, "RADIUS": tg._RADIUS[args.radius],
                "RSQRT": not args.no_rsqrt, "DROPOUT": not args.no_dropout, "IEEE_PV": args.values == "fp32",
                "ONE_PASS": True}
    print(f"triton {triton.__version__}, sm_{args.arch}a, {args.values} values, {switches}")
    for name in args.kernels.split(","):
        kernel, shapes, names = KERNELS[name]
        for shape in shapes:
            resources, sass, shared = compile_sass(kernel, shape, switches, args.values, args.ch, args.dv, args.arch)
            bm, bn, warps, stages = shape
            pairs = bm * bn / (32 * warps)  # (query, key) pairs per thread per tile
            found = loops(sass)
            labels = names if len(found) == len(names) else [f"loop {i}" for i in range(1, len(found) + 1)]
            line = " ".join(f"{label} {n / pairs:.0f}/pair {bars} bars;" for label, (n, bars, _) in zip(labels, found))
            print(f"{name:8} {bm:>3}x{bn:<3} warps {warps} stages {stages}: {resources['REG']} registers, "
                  f"{resources['STACK']} B stack, {shared} B shared | {line or 'no loops found'}")
            for label, (_, _, ops) in zip(labels, found) if args.top else ():
                print(f"    {label}:", ", ".join(f"{op} {k}" for op, k in ops.most_common(args.top)))


if __name__ == "__main__":
    main()
