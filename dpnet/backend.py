"""The array backend: NumPy always; CuPy in a process that asks for a device.

This is the only module that imports cupy, and only when ``device_xp`` is called --
in the GPU worker process. Nowhere else is it imported: the coordinator and every CPU
worker never load CUDA. The maths takes ``xp = xp_of(array)`` from the data it is
given, so one implementation serves NumPy and CuPy.

``DPNET_DEVICE=standin`` makes ``device_xp`` hand out ``dpnet.strictdevice`` instead
of CuPy: NumPy underneath, CuPy's rules between host and device on top, so the GPU
path runs -- and its transfer bugs fail -- on machines without a GPU.
"""
from __future__ import annotations

import os

import numpy as np

_DEVICE_MODULES = []          # (module, its array type), once loaded in this process


class DeviceError(RuntimeError):
    """No usable device: cupy missing, no CUDA device or driver, a bad index."""


def xp_of(*arrays):
    """The array module (numpy, cupy or the stand-in) that owns ``arrays``."""
    if _DEVICE_MODULES:
        for a in arrays:
            if not isinstance(a, np.ndarray):
                for mod, typ in _DEVICE_MODULES:
                    if isinstance(a, typ):
                        return mod
    return np


def to_numpy(a):
    """A host (NumPy) copy or view of ``a``, whichever backend it lives on."""
    if not isinstance(a, np.ndarray):
        for mod, typ in _DEVICE_MODULES:
            if isinstance(a, typ):
                return mod.asnumpy(a)
    return np.asarray(a)


def device_xp(index=0):
    """The device array module, with device ``index`` made current and checked usable;
    DeviceError (one line saying which, and what to do) otherwise."""
    if os.environ.get("DPNET_DEVICE") == "standin":
        from . import strictdevice as mod
        _register(mod, mod.ndarray)
        return mod
    try:
        import cupy as mod
    except ImportError as e:
        raise DeviceError(f"cupy is not installed ({e}); install the GPU extra: "
                          f"pip install -e \".[gpu]\"") from None
    except Exception as e:                # a cupy whose CUDA libraries fail to load
        raise DeviceError(f"cupy is installed but cannot load: {e}") from None
    try:
        count = mod.cuda.runtime.getDeviceCount()
        if not 0 <= index < count:
            raise DeviceError(f"--device {index}: this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''}"
                              + (f" (0..{count - 1})" if count else ""))
        mod.cuda.Device(index).use()
        mod.zeros(1).sum()                 # the first real use initializes CUDA
    except DeviceError:
        raise
    except Exception as e:                 # CUDARuntimeError: no driver, no device, ...
        raise DeviceError(f"cupy is installed but no CUDA device is usable: "
                          f"{type(e).__name__}: {e}") from None
    _register(mod, mod.ndarray)
    return mod


def _register(mod, typ):
    if all(m is not mod for m, _ in _DEVICE_MODULES):
        _DEVICE_MODULES.append((mod, typ))


def device_errors(xp):
    """The exception types that mean the device failed (a CUDA error, out of device
    memory), as opposed to a bug in the code that ran on it."""
    if hasattr(xp, "DeviceFault"):
        return (xp.DeviceFault,)
    types = [xp.cuda.runtime.CUDARuntimeError, xp.cuda.driver.CUDADriverError,
             xp.cuda.memory.OutOfMemoryError]
    try:
        from cupy_backends.cuda.libs import cublas
        types.append(cublas.CUBLASError)
    except Exception:
        pass
    return tuple(types)


def device_info(xp, index=0):
    """{"index", "name", "memory_total", "memory_free"} of the current device."""
    if hasattr(xp, "device_info"):
        return xp.device_info(index)
    free, total = xp.cuda.runtime.memGetInfo()
    name = xp.cuda.runtime.getDeviceProperties(index)["name"]
    return {"index": int(index), "name": name.decode() if isinstance(name, bytes) else name,
            "memory_total": int(total), "memory_free": int(free)}


def synchronize(xp):
    """Wait for the device's queued work (for timings); nothing for NumPy."""
    if xp is np:
        return
    if hasattr(xp, "synchronize"):
        xp.synchronize()
    else:
        xp.cuda.Stream.null.synchronize()


_KERNELS = {}
FUSE = os.environ.get("DPNET_FUSE", "1") != "0"      # DPNET_FUSE=0: the reference maths


def elementwise_kernel(xp, name, in_params, out_params, operation):
    """One fused element-wise CUDA kernel (CuPy's ElementwiseKernel) for the arrays of
    ``xp``, compiled once per process; None where ``xp`` is not CuPy (NumPy, the
    stand-in) or fusion is switched off, and the caller then runs its NumPy formula --
    the reference the kernel is tested against (tests/engines/test_gpu_real.py)."""
    if not FUSE or getattr(xp, "__name__", "") != "cupy":
        return None
    k = _KERNELS.get(name)
    if k is None:
        k = _KERNELS[name] = xp.ElementwiseKernel(in_params, out_params, operation, name)
    return k


def gpu_available() -> bool:
    """True if a real CUDA device is usable from this process (imports cupy)."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def check_dtype(dtype):
    """Normalise ``dtype`` and refuse anything but float32/float64."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt
