"""The README's demo command runs and tells the truth."""

import subprocess
import sys


def test_demo_tells_the_seed_story():
    out = subprocess.run(
        [sys.executable, "-m", "autohess", "demo"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "scipy.optimize.minimize" in out.stdout and "Audit against the exact Hessian" in out.stdout
    assert "autohess fit: logistic" in out.stdout and "No problems found." in out.stdout
    assert "2000 of 2000 refits converged" in out.stdout and "Bootstrap / Hessian SE" in out.stdout
    for cause in ("not_a_hessian", "truncation", "rounding", "indefinite"):
        assert cause in out.stdout  # the seed story: every wrong candidate gets its reason


def test_cli_usage_error():
    out = subprocess.run([sys.executable, "-m", "autohess", "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "usage" in out.stderr
