"""bench/gpu/check.py in its quick mode on the CPU: the same code paths the GPU run takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "bench/gpu/check.py"), "--quick", "--device", "cpu", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["bit_exact"] is True and result["decoded_factors_bit_exact"] is True
    assert len(result["bases_bit_exact"]) == 4  # two widths, two dtypes
    assert all(all(checks.values()) for checks in result["bases_bit_exact"].values())
    assert result["fit"]["ratio"] > 15  # the 7B-wide layer was really compressed at about 20x
    assert result["distill"]["notes"]["steps_run"] == 5
