"""Decorating a Triton kernel together with its `@triton.jit` helpers, in the mode (compiled or interpreted) in use.

`triton.jit` decides between compiled and interpreted at decoration time, and a kernel calls its helpers through
its module globals. So a kernel with helpers is decorated on first use, per mode, from a copy of the function whose
globals hold the helpers decorated in that same mode.
"""
from __future__ import annotations


def rebind(fn, g: dict):
    """`fn` with globals `g`. The annotations travel too: triton reads `tl.constexpr` from them, and a function
    rebuilt from its code object alone has none (every constexpr would then be specialised as a runtime value)."""
    new = type(fn)(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__annotations__ = dict(fn.__annotations__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def jit_with_helpers(kernels, helpers) -> tuple:
    """`triton.jit` of each function in `kernels`, seeing every function in `helpers` (by name) `triton.jit`-ed in
    the same mode; the helpers see each other the same way. All must come from one module (its globals are the
    base)."""
    import triton

    g = dict(kernels[0].__globals__)
    # one dict for all: a helper's call to another helper resolves, at compile time, to the jitted one
    g.update({h.__name__: triton.jit(rebind(h, g)) for h in helpers})
    return tuple(triton.jit(rebind(k, g)) for k in kernels)


def per_mode(kernels, helpers=(), one: bool = False):
    """`get(interpret) -> jitted kernels` for a kernel module: decorates `kernels` (with `helpers`, see
    `jit_with_helpers`) on first use in each mode, compiled or interpreted, and keeps them. `triton.jit` decides
    between the two at decoration time, and TRITON_INTERPRET may be set after the module was imported. With `one`,
    `get` returns the single kernel instead of a tuple."""
    cache: dict[bool, tuple] = {}

    def get(interpret: bool):
        if interpret not in cache:
            if helpers:
                cache[interpret] = jit_with_helpers(kernels, helpers)
            else:
                import triton

                cache[interpret] = tuple(triton.jit(k) for k in kernels)
        return cache[interpret][0] if one else cache[interpret]

    return get
