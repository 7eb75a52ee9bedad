"""A stand-in for CuPy that keeps CuPy's rules between host and device, computed by NumPy.

The GPU worker's whole code path runs on it where there is no GPU (CI, this project's
development machines), so that the bugs a GPU run would meet are met here first:

- a device array never turns into a NumPy array by itself: ``numpy.asarray(d)``,
  ``np.tanh(d)``, ``host[...] = d`` raise TypeError (as CuPy's do); ``d.get()`` and
  ``asnumpy(d)`` are the explicit ways down;
- a host array never enters device arithmetic: ``d + host``, ``host * d``,
  ``matmul(d, host)``, ``d[...] = host``, ``d[host_index]`` raise TypeError;
  ``asarray(host)`` is the explicit way up (Python and NumPy scalars mix freely, as
  in CuPy);
- reductions give 0-d device arrays, not host scalars (``float(d.sum())`` is the
  explicit read-back, as in CuPy).

It is stricter than CuPy in places (NumPy-array indices, ``d[...] = host``), never
looser. Only what dpnet's maths uses is provided; anything else is an AttributeError,
which a test then shows. ``backend.device_xp`` hands it out when ``DPNET_DEVICE`` is
``standin``; ``DPNET_STANDIN_MEMORY`` (bytes) sets the memory it reports, and
``DPNET_STANDIN_FAIL_AFTER=N`` makes its N-th operation raise a device error.
"""
from __future__ import annotations

import os

import numpy as np

NAME = "stand-in device (NumPy, CuPy's host/device rules)"


class _Rules(TypeError):
    pass


class DeviceFault(RuntimeError):
    """What ``DPNET_STANDIN_FAIL_AFTER`` injects: a device error in the middle of a run."""


_calls = [0, int(os.environ.get("DPNET_STANDIN_FAIL_AFTER", 0) or 0)]


def _tick():
    """Count a device operation; fail the one ``DPNET_STANDIN_FAIL_AFTER`` names (fault
    injection for tests: the CUDA error a real device can raise mid-run)."""
    _calls[0] += 1
    if _calls[1] and _calls[0] == _calls[1]:
        raise DeviceFault("cudaErrorIllegalAddress: an illegal memory access was "
                          f"encountered (injected at device operation {_calls[0]})")


def _no_host(what):
    raise _Rules(f"{what}: a host (NumPy) array cannot take part in device arithmetic; "
                 f"move it with asarray() first")


def _down(x, what="operand"):
    """The NumPy array behind a device operand; scalars pass; host arrays are refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        _no_host(what)
    if isinstance(x, (list, tuple)):
        return type(x)(_down(v, what) for v in x)
    return x                      # Python / NumPy scalars, None, slices, dtypes, ...


def _up(r):
    """Results go back to the device: arrays, and NumPy scalars as 0-d arrays."""
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_up(v) for v in r)
    return r


def _key(key):
    if isinstance(key, tuple):
        return tuple(_key(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, np.ndarray):
        _no_host("an index")
    if isinstance(key, list):
        _no_host("a list index")
    return key


class ndarray:
    """A device array (its memory is a NumPy array only this module touches)."""
    __slots__ = ("_a",)
    __array_ufunc__ = None        # NumPy hands every mixed operation back to us: refused

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    # -- what an array is ------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"device{self._a!r}"

    # reading back one value synchronizes, and is allowed (as in CuPy)
    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def item(self):
        return self._a.item()

    def get(self):
        return self._a.copy()

    def __iter__(self):
        return (ndarray(row) for row in self._a)

    # -- indexing ------------------------------------------------------------------
    def __getitem__(self, key):
        return _up(self._a[_key(key)])

    def __setitem__(self, key, value):
        self._a[_key(key)] = _down(value, "an assigned value")

    # -- methods -------------------------------------------------------------------
    def astype(self, dtype, copy=True):
        return ndarray(self._a.astype(dtype, copy=copy))

    def reshape(self, *shape):
        return ndarray(self._a.reshape(*shape))

    def transpose(self, *axes):
        return ndarray(self._a.transpose(*axes))

    def copy(self):
        return ndarray(self._a.copy())

    def ravel(self):
        return ndarray(self._a.ravel())

    def fill(self, value):
        self._a.fill(_down(value))

    def _reduce(name):
        def method(self, *args, **kwargs):
            out = kwargs.get("out")
            args = _down(args, f"{name}()")
            kwargs = {k: _down(v, f"{name}()") for k, v in kwargs.items()}
            r = getattr(self._a, name)(*args, **kwargs)
            return out if isinstance(out, ndarray) else _up(r)
        method.__name__ = name
        return method

    sum = _reduce("sum")
    max = _reduce("max")
    min = _reduce("min")
    mean = _reduce("mean")
    argmax = _reduce("argmax")
    all = _reduce("all")
    any = _reduce("any")
    dot = _reduce("dot")
    clip = _reduce("clip")
    del _reduce

    # -- arithmetic ----------------------------------------------------------------
    def _binary(op, reflected=False, inplace=False):
        def method(self, other):
            _tick()
            o = _down(other, f"'{op.__name__}' with a device array")
            if inplace:
                op(self._a, o, out=self._a)
                return self
            return _up(op(o, self._a) if reflected else op(self._a, o))
        return method

    __add__, __radd__, __iadd__ = (_binary(np.add), _binary(np.add, True),
                                   _binary(np.add, inplace=True))
    __sub__, __rsub__, __isub__ = (_binary(np.subtract), _binary(np.subtract, True),
                                   _binary(np.subtract, inplace=True))
    __mul__, __rmul__, __imul__ = (_binary(np.multiply), _binary(np.multiply, True),
                                   _binary(np.multiply, inplace=True))
    __truediv__, __rtruediv__, __itruediv__ = (_binary(np.true_divide),
                                               _binary(np.true_divide, True),
                                               _binary(np.true_divide, inplace=True))
    __pow__, __rpow__ = _binary(np.power), _binary(np.power, True)
    __matmul__, __rmatmul__ = _binary(np.matmul), _binary(np.matmul, True)
    __and__, __or__, __xor__ = _binary(np.bitwise_and), _binary(np.bitwise_or), \
        _binary(np.bitwise_xor)
    __rshift__, __irshift__ = _binary(np.right_shift), _binary(np.right_shift, inplace=True)
    __ixor__ = _binary(np.bitwise_xor, inplace=True)
    __lt__, __le__, __gt__, __ge__ = (_binary(np.less), _binary(np.less_equal),
                                      _binary(np.greater), _binary(np.greater_equal))
    __eq__, __ne__ = _binary(np.equal), _binary(np.not_equal)
    __hash__ = None
    del _binary

    def __neg__(self):
        return ndarray(-self._a)

    def __abs__(self):
        return ndarray(np.abs(self._a))


def _function(fn, name):
    """A module-level function on device arrays: host arrays refused, ``out=`` honoured."""
    def call(*args, **kwargs):
        _tick()
        out = kwargs.get("out")
        args = _down(args, f"{name}()")
        kwargs = {k: _down(v, f"{name}()") for k, v in kwargs.items()}
        r = fn(*args, **kwargs)
        if isinstance(out, ndarray):
            return out
        if isinstance(r, (bool, int, float)):
            # NumPy 1.x's count_nonzero gives a Python int; CuPy always a 0-d array
            r = np.asarray(r)
        return _up(r)
    call.__name__ = name
    return call


class _UFunc:
    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__
        self._call = _function(uf, uf.__name__)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def at(self, a, indices, b=None):
        if not isinstance(a, ndarray):
            _no_host(f"{self.__name__}.at")
        args = (_key(indices),) + (() if b is None else (_down(b, f"{self.__name__}.at"),))
        self._uf.at(a._a, *args)


# -- moving data ---------------------------------------------------------------------
def asarray(a, dtype=None):
    """Host or device data to the device (the explicit way up)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    return ndarray(np.array(a, dtype=dtype, copy=True))


array = asarray


def asnumpy(a):
    """A device array's host copy (the explicit way down)."""
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


# -- creation --------------------------------------------------------------------------
def _creator(fn):
    def make(*args, **kwargs):
        return ndarray(fn(*args, **kwargs))
    make.__name__ = fn.__name__
    return make


zeros, empty, ones, full, arange = (_creator(np.zeros), _creator(np.empty), _creator(np.ones),
                                    _creator(np.full), _creator(np.arange))


def _like(fn):
    def make(a, *args, **kwargs):
        if not isinstance(a, ndarray):
            _no_host(f"{fn.__name__}()")
        return ndarray(fn(a._a, *args, **kwargs))
    make.__name__ = fn.__name__
    return make


zeros_like, empty_like, ones_like = _like(np.zeros_like), _like(np.empty_like), \
    _like(np.ones_like)

# -- functions and ufuncs --------------------------------------------------------------
for _name in ("add", "subtract", "multiply", "divide", "true_divide", "maximum", "minimum",
              "tanh", "exp", "log", "sqrt", "abs", "negative", "square", "isfinite",
              "equal", "less", "greater", "right_shift", "bitwise_xor", "power", "floor",
              "cos", "sin"):
    globals()[_name] = _UFunc(getattr(np, _name))
for _name in ("matmul", "dot", "sum", "where", "take", "concatenate", "stack", "clip",
              "count_nonzero", "copyto", "repeat", "argmax", "max", "min", "mean",
              "searchsorted", "cumsum"):
    globals()[_name] = _function(getattr(np, _name), _name)
del _name

# dtypes are NumPy's own, as in CuPy
float16, float32, float64 = np.float16, np.float32, np.float64
int8, int16, int32, int64, intp = np.int8, np.int16, np.int32, np.int64, np.intp
uint8, uint16, uint32, uint64 = np.uint8, np.uint16, np.uint32, np.uint64
bool_ = np.bool_
dtype = np.dtype
newaxis = None


def fuse(fn=None, **kwargs):
    """CuPy's kernel fusion; here the Python function itself, on device arrays."""
    return fn if fn is not None else (lambda f: f)


def synchronize():
    """Nothing runs asynchronously here."""


def device_info(index=0):
    """What the GPU worker reports of its device."""
    total = int(os.environ.get("DPNET_STANDIN_MEMORY", 16 << 30))
    return {"index": int(index), "name": NAME, "memory_total": total, "memory_free": total}
