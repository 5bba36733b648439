"""The README's quickstart runs end to end."""

import os
import subprocess
import sys

from conftest import ROOT, kiln_bin


def test_quickstart_runs(tmp_path):
    env = dict(os.environ, KILN_BIN=kiln_bin())
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "'ok': True" in out.stdout
    assert "served probabilities equal scikit-learn's" in out.stdout
