"""Switching Paddle between dynamic and static mode for a block of code."""

from __future__ import annotations

import contextlib

import paddle


@contextlib.contextmanager
def dygraph_mode():
    """Run a block in dynamic mode and return to the mode the caller was in."""
    was_static = not paddle.in_dynamic_mode()
    paddle.disable_static()
    try:
        yield
    finally:
        if was_static:
            paddle.enable_static()


@contextlib.contextmanager
def static_mode():
    """Run a block in static mode and return to the mode the caller was in."""
    was_dynamic = paddle.in_dynamic_mode()
    if was_dynamic:  # enable_static() in static mode is not a no-op: inside paddle.jit.save
        paddle.enable_static()  # it leaves Paddle in dynamic mode once the save returns
    try:
        yield
    finally:
        if was_dynamic:
            paddle.disable_static()
