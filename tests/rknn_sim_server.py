"""Test helper that runs INSIDE the rknn-toolkit2 venv: rknn-toolkit2's PC simulator as a long-lived server.

The simulator cannot load a built ``.rknn`` (only a model built in the same process), so the server builds each
ONNX graph it is asked for once (fp16, no quantization, as the converter) and then runs inferences on it.
One JSON request per line on stdin, one JSON answer per line on stdout (the toolkit's log goes to stderr):

    {"op": "build", "onnx": PATH}                      → {"ok": true, "id": N, "build_s": S}
    {"op": "run", "id": N, "inputs": NPZ, "out": NPZ}  → {"ok": true}   (inputs in the graph's input order)
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import numpy as np
    import onnx
    from rknn.api import RKNN

    models: list[tuple[object, list[str]]] = []
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "build":
                t0 = time.monotonic()
                r = RKNN(verbose=False)
                r.config(target_platform="rk3588")
                if r.load_onnx(model=req["onnx"]) != 0 or r.build(do_quantization=False) != 0:
                    raise RuntimeError("load_onnx/build failed")
                if r.init_runtime() != 0:
                    raise RuntimeError("init_runtime (simulator) failed")
                names = [i.name for i in onnx.load(req["onnx"], load_external_data=False).graph.input]
                models.append((r, names))
                ans = {"ok": True, "id": len(models) - 1, "build_s": round(time.monotonic() - t0, 2)}
            elif req["op"] == "run":
                r, names = models[req["id"]]
                with np.load(req["inputs"]) as z:
                    feeds = [np.ascontiguousarray(z[n], dtype=np.float32) for n in names]
                outs = r.inference(inputs=feeds)
                if outs is None:
                    raise RuntimeError("simulator inference returned None")
                np.savez(req["out"], *[np.asarray(o, np.float32) for o in outs])
                ans = {"ok": True}
            else:
                ans = {"ok": False, "error": f"unknown op {req['op']!r}"}
        except Exception as e:  # reported to the test, which fails with it
            ans = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(ans) + "\n")
        out.flush()
    for r, _ in models:
        r.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
