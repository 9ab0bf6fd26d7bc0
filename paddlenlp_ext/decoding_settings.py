"""The decoding settings a generation model takes at run time: names, dtypes, ranges.

Shared by the exported loop (``decoding``), the predictor's validation (before Paddle
is imported, so this module imports numpy only) and the arrays fed to a static model.
The names and dtypes are PaddleNLP's export inputs (``top_k`` int64, ``top_p`` and
``temperature`` float32, each of shape [1]); ``repetition_penalty`` and ``seed`` are
this project's additions.
"""

from __future__ import annotations

import numpy as np

SETTING_INPUTS = ("seed", "top_k", "top_p", "temperature", "repetition_penalty")
SETTING_DTYPES = {"seed": "int64", "top_k": "int64", "top_p": "float32", "temperature": "float32",
                  "repetition_penalty": "float32"}


def check_settings(top_k: int, top_p: float, temperature: float, repetition_penalty: float) -> None:
    """Raise ValueError, naming the setting, for a value no decoding can use."""
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {top_p}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be positive (for greedy decoding use greedy_search or top_k 1), "
                         f"got {temperature}")
    if not repetition_penalty > 0.0:
        raise ValueError(f"repetition_penalty must be positive (1.0 = off), got {repetition_penalty}")


def settings_feed(top_k: int, top_p: float, temperature: float, repetition_penalty: float, seed: int) -> dict:
    """The [1] arrays of ``SETTING_INPUTS``, by name."""
    values = {"seed": seed, "top_k": top_k, "top_p": top_p, "temperature": temperature,
              "repetition_penalty": repetition_penalty}
    return {name: np.array([values[name]], dtype=SETTING_DTYPES[name]) for name in SETTING_INPUTS}


# What a setting left unset (None) is, unless the model fixes it (``fixed_settings``):
# PaddleNLP 2.8's llm/predictor.py (its PredictorArgument: top_k 0, top_p 0.7,
# temperature 0.95, repetition_penalty 1.0, decode_strategy "sampling", so with no flag
# it samples; a 2023 copy had top_k 1, greedy in effect) and this project's seed.
DEFAULTS = {"top_k": 0, "top_p": 0.7, "temperature": 0.95, "repetition_penalty": 1.0, "seed": 42}
UNKNOWN = object()  # a setting a static model fixes at a value nobody recorded


def fixed_settings(input_names) -> dict:
    """What a static generation model does for each setting it takes no input for.

    PaddleNLP 2.8's ``to_static`` export (it takes ``position_ids``; ``sample_d2s``)
    always samples without a repetition penalty, from Paddle's own generator (no
    seed), with either a ``top_k`` input (``use_top_p: False``: top-p and temperature
    fixed at 1.0) or ``top_p`` and ``temperature`` inputs (top-k off). Any other
    model's missing settings are ``UNKNOWN``.
    """
    names = set(input_names)
    fixed = dict.fromkeys((name for name in SETTING_INPUTS if name not in names), UNKNOWN)
    if "position_ids" in names and ("top_k" in names or "top_p" in names):
        known = {"top_k": 0, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0}
        fixed.update({name: value for name, value in known.items() if name in fixed})
    return fixed


def resolve_settings(requested: dict, greedy: bool, fixed: dict) -> dict:
    """Every setting's value for a model that fixes ``fixed`` (``fixed_settings``).

    ``requested`` holds the asked-for value of each of ``SETTING_INPUTS`` or None
    (unset: the model's fixed value, else ``DEFAULTS``); ``greedy`` asks for greedy
    search, which is ``top_k`` 1. A value asked for that the model cannot honour
    raises ValueError, one line naming the flag. Settings that cannot change the tokens
    are not held against the model: under greedy search, top-p, temperature and the
    seed.
    """
    asked = dict(requested)
    flags = {name: f"--{name} {asked[name]}" for name in SETTING_INPUTS}
    if greedy:
        asked["top_k"], flags["top_k"] = 1, "--decode_strategy greedy_search"

    def value(name):
        if asked[name] is not None:
            return asked[name]
        known = fixed.get(name, UNKNOWN)
        return DEFAULTS[name] if known is UNKNOWN else known

    resolved = {name: value(name) for name in SETTING_INPUTS}
    sampling = resolved["top_k"] != 1
    for name, known in fixed.items():
        if asked[name] is None or (not sampling and name in ("top_p", "temperature", "seed")):
            continue
        if known is UNKNOWN:
            raise ValueError(f"{flags[name]}: the model takes no {name} input and does not record the {name} it uses")
        if asked[name] != known:
            raise ValueError(f"{flags[name]}: the model takes no {name} input; it decodes with {name} {known}")
    return resolved
