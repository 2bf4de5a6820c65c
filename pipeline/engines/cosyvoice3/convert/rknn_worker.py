"""Runs INSIDE the rknn-toolkit2 venv (``scripts/setup-rknn-env.sh``): ONNX → .rknn, then the PC simulator.

The toolkit pins old numpy/onnx/protobuf/torch, so it cannot share the project's environment; the converter
(:mod:`.convert.rknn_export`) calls this file as a subprocess. It imports only the standard library, numpy,
onnx and ``rknn.api``: no project code.

Protocol: ``python rknn_worker.py JOB_JSON`` where JOB_JSON is::

    {"target": "rk3588", "simulate": true,
     "disable_rules_fallback": ["fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa"],
     "graphs": [{"seq": 200, "onnx": ".../s200.onnx", "rknn": ".../s200.rknn",
                 "inputs": ".../s200.inputs.npz", "sim_out": ".../s200.sim.npy"}]}

A ``sim_out`` ending in ``.npz`` receives every output (``arr_0``, ``arr_1``, …); a graph may carry
``"dynamic_input"`` (rknn-toolkit2's list of input shape sets), with ``inputs`` and ``sim_out`` as lists (one
simulator run per entry).

The result is one JSON object on stdout (the toolkit's own log goes to stderr)::

    {"ok": true, "toolkit": "2.5.0", "graphs": [{"seq": 200, "disable_rules": [], "attempts": [...],
     "build_s": 1.2, "sim_s": 0.4, "sim_out": "..."}]}

or ``{"ok": false, "error": "..."}`` with exit status 2. A graph whose build fails with the default rules is
rebuilt once with ``disable_rules_fallback`` (rknn-toolkit2 2.5.0 crashes in ``build()`` with ``KeyError: 'q_mm'``
after its SDPA fusion rule on some attention patterns); every attempt is reported.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _fail(out, msg: str) -> int:
    out.write(json.dumps({"ok": False, "error": msg}) + "\n")
    out.flush()
    return 2


def _short(e: BaseException) -> str:
    """The toolkit wraps its errors with the whole traceback in the message; keep the final line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if ":" in last and last.split(":")[0].endswith(("Error", "Exception")):
        return last
    return f"{type(e).__name__}: {last}"


def _attempt(RKNN, np, onnx, g: dict, target: str, rules: list[str], simulate: bool) -> dict:  # noqa: N803
    rknn = RKNN(verbose=False)
    t0 = time.monotonic()
    try:
        cfg = {"target_platform": target}
        if rules:
            cfg["disable_rules"] = list(rules)
        if g.get("dynamic_input"):  # several input shape sets in one graph (one copy of the weights)
            cfg["dynamic_input"] = g["dynamic_input"]
        rknn.config(**cfg)
        ret = rknn.load_onnx(model=g["onnx"])
        if ret != 0:
            raise RuntimeError(f"load_onnx returned {ret}")
        ret = rknn.build(do_quantization=False)  # no quantization: the NPU runs the graph in fp16
        if ret != 0:
            raise RuntimeError(f"build returned {ret}")
        ret = rknn.export_rknn(g["rknn"])
        if ret != 0:
            raise RuntimeError(f"export_rknn returned {ret}")
        build_s = time.monotonic() - t0
        sim_s = None
        if simulate:
            t1 = time.monotonic()
            ret = rknn.init_runtime()  # no target: the PC simulator
            if ret != 0:
                raise RuntimeError(f"init_runtime (simulator) returned {ret}")
            names = [i.name for i in onnx.load(g["onnx"], load_external_data=False).graph.input]
            many = isinstance(g["inputs"], list)  # a dynamic-shape graph: one run per shape set
            for src, dst in zip(*((g["inputs"], g["sim_out"]) if many else ([g["inputs"]], [g["sim_out"]])),
                                strict=True):
                with np.load(src) as z:
                    feeds = [np.ascontiguousarray(z[n], dtype=np.float32) for n in names]
                outs = rknn.inference(inputs=feeds)
                if outs is None:
                    raise RuntimeError("simulator inference returned None (see the toolkit log)")
                if dst.endswith(".npz"):  # every output, in the graph's order
                    np.savez(dst, *[np.asarray(o, dtype=np.float32) for o in outs])
                else:
                    np.save(dst, np.asarray(outs[0], dtype=np.float32))
            sim_s = time.monotonic() - t1
        return {"ok": True, "build_s": round(build_s, 3), "sim_s": None if sim_s is None else round(sim_s, 3)}
    finally:
        rknn.release()


def main(argv: list[str]) -> int:
    # The toolkit prints to stdout; keep the real stdout for the JSON answer only.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if len(argv) != 2:
        return _fail(out, "usage: rknn_worker.py JOB_JSON")
    try:
        job = json.loads(argv[1])
    except json.JSONDecodeError as e:
        return _fail(out, f"bad job JSON: {e}")
    try:
        import importlib.metadata as md

        import numpy as np
        import onnx
        from rknn.api import RKNN
    except Exception as e:  # ImportError, or pkg_resources/torch problems inside rknn.api
        return _fail(out, f"cannot import rknn-toolkit2 ({type(e).__name__}: {e})")
    toolkit = md.version("rknn-toolkit2")
    target = job["target"]
    simulate = bool(job.get("simulate", True))
    fallback = list(job.get("disable_rules_fallback") or [])
    results = []
    for g in job["graphs"]:
        attempts = []
        rule_sets = [[]] + ([fallback] if fallback else [])
        res: dict = {"seq": g["seq"], "ok": False}
        for rules in rule_sets:
            try:
                r = _attempt(RKNN, np, onnx, g, target, rules, simulate)
            except Exception as e:
                print(traceback.format_exc(limit=3), file=sys.stderr)
                attempts.append({"disable_rules": rules, "error": _short(e)})
                continue
            attempts.append({"disable_rules": rules, "error": None})
            res.update(r, disable_rules=rules, sim_out=g.get("sim_out") if simulate else None)
            break
        res["attempts"] = attempts
        results.append(res)
        if not res["ok"]:
            break  # the converter refuses the whole set anyway; do not spend minutes on the rest
    out.write(json.dumps({"ok": all(r["ok"] for r in results), "toolkit": toolkit, "graphs": results}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
