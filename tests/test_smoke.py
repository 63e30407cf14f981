"""The package imports, pins its public names, and the CLI answers."""

import subprocess
import sys

import pytest

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


def test_option_price_and_implied_vol_take_device_booleans_without_a_host_copy(monkeypatch):
    """``right``/``style`` as boolean arrays of another namespace (CuPy on a GPU) stay there: CuPy refuses
    ``np.asarray`` of its arrays, which array_api_strict is made to refuse here too."""
    import array_api_strict as xs
    import numpy as np

    def refuse(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")

    spot, strike = xs.asarray([100.0, 100.0]), xs.asarray([100.0, 90.0])
    t, vol = xs.asarray([0.5, 1.0]), xs.asarray([0.2, 0.3])
    right, style = xs.asarray([True, False]), xs.asarray([False, True])
    want = [float(gpu_margin.option_price("C", 100.0, 100.0, 0.5, 0.2, 0.05, 0.0, "E")),
            float(gpu_margin.option_price("P", 100.0, 90.0, 1.0, 0.3, 0.05, 0.0, "A"))]
    monkeypatch.setattr(type(spot), "__array__", refuse)
    v = gpu_margin.option_price(right, spot, strike, t, vol, 0.05, 0.0, style)
    assert type(v) is type(spot)
    got = [float(v[0]), float(v[1])]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    iv = gpu_margin.implied_vol(v, right, spot, strike, t, 0.05, 0.0, style)
    np.testing.assert_allclose([float(iv[0]), float(iv[1])], [0.2, 0.3], rtol=1e-8)


def test_a_cupy_that_cannot_run_a_kernel_is_no_gpu(monkeypatch):
    """CuPy imports and sees a device, but building a kernel fails (no NVRTC, a driver mismatch): auto falls
    back to NumPy saying why, gpu is a one-line DeviceError; not a crash in the middle of a partition."""
    import sys
    import types

    from gpu_margin import _backend
    from gpu_margin._exceptions import DeviceError

    def broken(*args, **kwargs):
        raise RuntimeError("nvrtc: libnvrtc.so not found")

    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Fake GPU"})
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime), arange=broken, exp=broken,
                                 float64="float64")
    monkeypatch.setitem(sys.modules, "cupy", fake)
    _backend._probe_cupy.cache_clear()
    try:
        auto = _backend.select_backend("auto")
        assert auto.name == "numpy" and "cannot run a kernel on Fake GPU" in auto.description
        with pytest.raises(DeviceError, match="cannot run a kernel"):
            _backend.select_backend("gpu")
    finally:
        _backend._probe_cupy.cache_clear()
