import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.engines.cosyvoice3.verify import TOLERANCES, load_goldens, run_verify
from pipeline.shared.errors import InputError


def test_verify_passes_on_converted_fixture(tiny_bundle, goldens):
    results = run_verify(tiny_bundle, goldens, log=lambda m: None)
    assert [r.stage for r in results] == list(TOLERANCES)
    bad = [(r.stage, r.max_abs_err) for r in results if not r.passed]
    assert not bad, bad


def test_verify_fails_when_a_stage_misses(tiny_bundle, goldens):
    g = dict(goldens)
    g["flow_mel"] = goldens["flow_mel"] + 2e-3  # just over the 1e-3 tolerance
    g["llm_greedy_tokens"] = goldens["llm_greedy_tokens"].copy()
    g["llm_greedy_tokens"][5] += 1
    by = {r.stage: r for r in run_verify(tiny_bundle, g, log=lambda m: None)}
    assert not by["flow_mel"].passed and by["flow_mel"].max_abs_err == pytest.approx(2e-3, rel=0.05)
    assert not by["llm_greedy_tokens"].passed
    assert by["flow_mu"].passed and by["llm_tf_logp"].passed and by["prompt_mel"].passed


def test_cli_json_and_exit_codes(tiny_bundle, goldens, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", "--bundle", str(tiny_bundle.root),
                        "--goldens", str(tiny_bundle.root.parent / "missing.npz")], capture_output=True, text=True)
    assert r.returncode == 2 and "goldens file" in r.stderr and "Traceback" not in r.stderr

    bad = dict(goldens)
    bad["hift_speech"] = goldens["hift_speech"] * 1.01 + 1e-2
    path = tmp_path / "bad.npz"
    np.savez(path, **bad)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", "--bundle", str(tiny_bundle.root),
                        "--goldens", str(path), "--json"], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["passed"] is False
    assert [s["stage"] for s in out["stages"] if not s["passed"]] == ["hift_speech"]


def test_goldens_missing_keys(tmp_path, goldens):
    path = tmp_path / "g.npz"
    np.savez(path, **{k: v for k, v in goldens.items() if k != "flow_mu"})
    with pytest.raises(InputError, match="lacks flow_mu"):
        load_goldens(path)
