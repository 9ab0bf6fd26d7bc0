"""How every patch of ``compat`` is applied: set inside a block, put back on exit."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def replaced_attributes(replacements):
    """Set each ``(owner, name, value)`` of ``replacements`` in order inside the block; on
    exit, even by an exception, put every attribute back as it was, in reverse order (an
    attribute replaced twice gets its first value back)."""
    originals = []
    try:
        for owner, name, value in replacements:
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(originals):
            setattr(owner, name, value)


@contextlib.contextmanager
def environment(values: dict):
    """The environment variables ``values`` set inside the block, as they were after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
