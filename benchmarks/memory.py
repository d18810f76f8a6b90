"""Peak memory per input pixel of one forward pass, measured against the tiler's estimate.

``fringelive.bundle.netspec.activation_bytes_per_pixel(spec)`` sizes tiles from a memory budget;
this script measures the real peak resident memory (fresh process per case, so earlier
allocations do not count) for torch CPU and ONNX Runtime CPU and prints measured/estimate.

    python benchmarks/memory.py [--side 1024]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CASE = r"""
import os, resource, sys
import numpy as np, torch
from fringelive.engine.models import build_model
kind, n, onnx_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
x = np.random.rand(1, 1, n, n).astype(np.float32)
if kind == 'torch':
    m = build_model('resunet-seed').eval()
    with torch.no_grad():
        m(torch.zeros(1, 1, 64, 64))
    t = torch.from_numpy(x)
    base = rss()
    with torch.no_grad():
        y = m(t)
else:
    import onnxruntime as ort
    s = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    s.run(None, {'image': np.zeros((1, 1, 64, 64), np.float32)})
    base = rss()
    y = s.run(None, {'image': x})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / n / n)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1024, help="input side, px (default: 1024)")
    args = ap.parse_args()
    import torch

    from fringelive.bundle.netspec import activation_bytes_per_pixel
    from fringelive.export.onnx_export import export_onnx
    from fringelive.engine.models import UNetSpec, build_model

    est = activation_bytes_per_pixel(UNetSpec())
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        export_onnx(build_model("resunet-seed").eval(), onnx_path)
        print(f"resunet-seed, input {args.side}x{args.side}, estimate {est} B/px (torch threads {torch.get_num_threads()})")
        print(f"{'runtime':<14}{'peak B/px':>10}{'measured/estimate':>19}")
        for kind in ("torch", "onnxruntime"):
            out = subprocess.run([sys.executable, "-c", CASE, kind, str(args.side), str(onnx_path)],
                                 capture_output=True, text=True, check=True)
            measured = float(out.stdout.split()[-1])
            print(f"{kind:<14}{measured:>10.0f}{measured / est:>19.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
