"""The package imports, pins its public names, and the CLI answers."""

import subprocess
import sys

import gpu_margin


def test_public_names():
    assert {"option_price", "implied_vol", "compute", "select_backend", "GpuMarginError"} <= set(gpu_margin.__all__)
    assert all(callable(getattr(gpu_margin, name)) for name in ("option_price", "implied_vol", "compute"))


def test_cli_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "gpu_margin", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("gpu-margin ")


def test_gpu_device_without_gpu_is_one_line_error(monkeypatch):
    from gpu_margin import _backend

    ok, _ = _backend.gpu_status()
    if ok:  # pragma: no cover
        return
    res = subprocess.run(
        [sys.executable, "-m", "gpu_margin", "devices", "--device", "gpu"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "--device cpu" in res.stderr
    assert "Traceback" not in res.stderr
