"""The benchmark scripts run end to end (tiny shapes); they print timings, the tests assert none."""
import subprocess
import sys

import pytest


def _run(*args):
  result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_dcls_benchmark_quick_run_prints_the_table_and_summary():
  pytest.importorskip("torch")
  stdout = _run("benchmarks.bench_dcls", "--quick")
  assert "| shape |" in stdout and "Summary" in stdout, stdout[-3000:]


def test_conv_benchmark_quick_run_prints_every_algorithm_and_the_choice():
  stdout = _run("benchmarks.bench_conv", "--quick", "--steps", "1")
  assert "| shape | direct s | fft s | dft s | fastest | chosen | chosen / fastest |" in stdout, stdout[-3000:]
  assert "| dense 1-D 16->8 T20 N2 k25 |" in stdout and "| dw 2-D C8@16x16 N2 k7 |" in stdout, stdout[-3000:]


@pytest.mark.slow
def test_training_throughput_benchmark_quick_run_prints_the_ratios(tmp_path):
  stdout = _run("benchmarks.bench_train", "--quick", "--warmup", "2", "--data_dir", str(tmp_path))
  assert "| + real input pipeline |" in stdout and "pipeline / bare = " in stdout, stdout[-3000:]


@pytest.mark.slow
def test_snn_benchmark_quick_run_prints_the_three_variants():
  stdout = _run("benchmarks.bench_snn", "--quick", "--steps", "1")
  assert all(f"| {delays} |" in stdout for delays in ("learned", "fixed", "none")), stdout[-3000:]
  assert "learned / fixed = " in stdout


@pytest.mark.slow
def test_convnext_benchmark_quick_run_prints_the_three_variants():
  stdout = _run("benchmarks.bench_convnext", "--quick")
  assert all(name in stdout for name in ("| plain 7x7 |", "| dcls v0 d17 Kc34 |", "| dcls gauss d23 Kc26 |"))


@pytest.mark.slow
def test_audio_benchmark_quick_run_prints_every_model_with_the_reference_ratio():
  stdout = _run("benchmarks.bench_audio", "--quick")
  assert all(f"| {name} |" in stdout for name in ("convnext", "convformer", "fastvit")), stdout[-3000:]
  assert "| 0.861 |" in stdout  # ConvNeXt-T's reference ratio 509.4 / 591.4
