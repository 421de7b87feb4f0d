"""Importing pipeline makes OpenMP wait passively (torch's ops stall on a busy machine otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_import_sets_passive_openmp_unless_the_user_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import pipeline, os; print(os.environ['OMP_WAIT_POLICY'])"
    assert subprocess.check_output([sys.executable, "-c", code], env=env, text=True).strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.check_output([sys.executable, "-c", code], env=env, text=True).strip() == "ACTIVE"
