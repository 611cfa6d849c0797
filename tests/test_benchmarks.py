"""The benchmark script runs end to end (tiny shapes); it prints timings, it asserts none."""
import subprocess
import sys

import pytest

pytest.importorskip("torch")


@pytest.mark.slow
def test_benchmark_quick_run_prints_the_table_and_summary():
  result = subprocess.run([sys.executable, "-m", "benchmarks.bench_dcls", "--quick"], capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| shape |" in result.stdout and "Summary" in result.stdout, result.stdout[-3000:]
