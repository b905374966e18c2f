"""The README's demo command runs and tells the truth."""

import subprocess
import sys


def test_demo_runs():
    out = subprocess.run(
        [sys.executable, "-m", "autohess", "demo"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Exact Hessian of the negative log-likelihood" in out.stdout
    assert "Positive definite: True" in out.stdout
    rel = float(out.stdout.split("closed form X'diag(p(1-p))X: ")[1].split()[0])
    assert rel < 1e-12
    assert "autohess fit: logistic" in out.stdout and "No problems found." in out.stdout


def test_cli_usage_error():
    out = subprocess.run([sys.executable, "-m", "autohess", "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "usage" in out.stderr
