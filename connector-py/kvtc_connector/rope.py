"""Rotary position embedding (RoPE): canonical parameters and a float64 reference.

kvtc removes RoPE from keys before calibration and compression and re-applies it after
decompression, at each token's absolute position (paper section 3.1; design section 3). This module
turns a transformers config into the one canonical, JSON-able description of the model's RoPE
that the capture files, the calibration file and the sidecar share::

    {"theta": float, "rotary_dim": int, "layout": "neox" | "interleaved",
     "scaling": {"type": "default"}
              | {"type": "linear", "factor": f}
              | {"type": "llama3", "factor": f, "low_freq_factor": f, "high_freq_factor": f,
                 "original_max_position_embeddings": n}}

Math. Let ``r = rotary_dim`` (even, ``<= head_dim``) and ``inv_freq_i = theta^(-2i/r)`` for
``i = 0 .. r/2 - 1``, then modified by the scaling (``linear``: divided by ``factor``;
``llama3``: transformers' ``_compute_llama3_parameters``). At position ``t`` the angle of pair
``i`` is ``t * inv_freq_i`` and the pair ``(a, b)`` is rotated::

    apply:  a' = a cos - b sin,   b' = b cos + a sin
    remove: a  = a' cos + b' sin, b  = b' cos - a' sin

The pair ``i`` is ``(i, i + r/2)`` in the ``neox`` layout (transformers' ``rotate_half``: Llama,
Mistral, Qwen, SmolLM) and ``(2i, 2i + 1)`` in the ``interleaved`` layout (Meta/GGUF weights,
GLM, Cohere). Dimensions ``>= r`` are not rotated. Each rotation is orthonormal, so remove is the
exact inverse of apply up to float rounding. The reference runs in float64; the models compute
cos/sin in float32, so a float64 reference agrees with a model's own keys to about 1e-6 relative.

Invariant shared with the C++/CUDA codec: the same parameters must give the same angles; only
the RoPE types listed above are accepted, every other type raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "INTERLEAVED_MODEL_TYPES",
    "apply_rope",
    "inv_freq",
    "remove_rope",
    "rope_params_from_config",
]

# transformers model types whose attention rotates pairs (2i, 2i+1) ("rotate_half" over x[..., ::2]
# with repeat_interleave'd cos/sin). Everything else that transformers runs with the Llama-style
# rotate_half is "neox".
INTERLEAVED_MODEL_TYPES = frozenset({"cohere", "cohere2", "glm", "glm4", "helium"})

_SUPPORTED_SCALING = ("default", "linear", "llama3")

FloatArray = npt.NDArray[np.float64]


def _get(config: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a config object or from a plain dict (e.g. a loaded config.json)."""
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _flat_rope_parameters(config: Any) -> dict[str, Any]:
    """Merge transformers 5.x ``rope_parameters`` with 4.x ``rope_theta`` and ``rope_scaling``."""
    params: dict[str, Any] = {}
    legacy = _get(config, "rope_scaling")
    current = _get(config, "rope_parameters")
    for source in (legacy, current):
        if source is None:
            continue
        if not isinstance(source, Mapping):
            raise ValueError(f"rope parameters must be a dict, got {type(source).__name__}")
        params.update(source)

    # transformers 5.x nests the parameters by layer type for models such as Gemma 3
    # ({"full_attention": {...}, "sliding_attention": {...}}); we accept that only when every
    # layer type uses the same RoPE.
    nested = [v for v in params.values() if isinstance(v, Mapping)]
    if nested:
        if any(dict(v) != dict(nested[0]) for v in nested) or len(nested) != len(params):
            raise ValueError(
                "per-layer-type RoPE parameters differ between layer types: "
                f"{sorted(k for k, v in params.items() if isinstance(v, Mapping))}"
            )
        params = dict(nested[0])

    if "rope_theta" not in params:
        theta = _get(config, "rope_theta")
        if theta is None:
            theta = _get(config, "default_theta")
        if theta is None:
            raise ValueError("config has no rope_theta (neither rope_parameters nor rope_theta)")
        params["rope_theta"] = theta
    if "partial_rotary_factor" not in params and _get(config, "partial_rotary_factor") is not None:
        params["partial_rotary_factor"] = _get(config, "partial_rotary_factor")
    return params


def rope_params_from_config(config: Any, layout: str | None = None) -> dict[str, Any]:
    """Return the canonical RoPE dict for a transformers config (object or config.json dict).

    ``layout`` overrides the layout inferred from ``model_type`` (``"neox"`` unless the model type
    is in :data:`INTERLEAVED_MODEL_TYPES`). Raises ``ValueError`` for RoPE types other than
    default, linear and llama3, naming the type.
    """
    params = _flat_rope_parameters(config)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _SUPPORTED_SCALING:
        supported = ", ".join(_SUPPORTED_SCALING)
        raise ValueError(f"unsupported RoPE scaling type {rope_type!r} (supported: {supported})")

    head_dim = _get(config, "head_dim")
    if head_dim is None:
        head_dim = int(_get(config, "hidden_size")) // int(_get(config, "num_attention_heads"))
    partial = float(params.get("partial_rotary_factor") or 1.0)
    rotary_dim = int(int(head_dim) * partial)
    if rotary_dim <= 0 or rotary_dim % 2 != 0 or rotary_dim > int(head_dim):
        raise ValueError(f"invalid rotary_dim {rotary_dim} for head_dim {head_dim}")

    if layout is None:
        layout = "interleaved" if _get(config, "model_type") in INTERLEAVED_MODEL_TYPES else "neox"
    if layout not in ("neox", "interleaved"):
        raise ValueError(f"unknown RoPE layout {layout!r} (expected 'neox' or 'interleaved')")

    scaling: dict[str, Any]
    if rope_type == "default":
        scaling = {"type": "default"}
    elif rope_type == "linear":
        scaling = {"type": "linear", "factor": float(params["factor"])}
    else:
        original = params.get("original_max_position_embeddings")
        if original is None:
            original = _get(config, "original_max_position_embeddings")
        if original is None:
            original = _get(config, "max_position_embeddings")
        if original is None:
            raise ValueError("llama3 RoPE scaling needs original_max_position_embeddings")
        scaling = {
            "type": "llama3",
            "factor": float(params["factor"]),
            "low_freq_factor": float(params["low_freq_factor"]),
            "high_freq_factor": float(params["high_freq_factor"]),
            "original_max_position_embeddings": int(original),
        }

    return {
        "theta": float(params["rope_theta"]),
        "rotary_dim": rotary_dim,
        "layout": layout,
        "scaling": scaling,
    }


def inv_freq(params: Mapping[str, Any]) -> FloatArray:
    """Inverse frequencies, float64, shape ``[rotary_dim / 2]``, scaling applied."""
    rotary_dim = int(params["rotary_dim"])
    theta = float(params["theta"])
    freqs: FloatArray = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    scaling = params["scaling"]
    kind = scaling["type"]
    if kind == "default":
        return freqs
    if kind == "linear":
        return freqs / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_context = float(scaling["original_max_position_embeddings"])
        low_freq_wavelen = old_context / low
        high_freq_wavelen = old_context / high
        wavelen = 2.0 * math.pi / freqs
        # Long wavelengths (low frequencies) are slowed down by `factor`, short ones are kept,
        # and the band in between is interpolated smoothly.
        scaled = np.where(wavelen > low_freq_wavelen, freqs / factor, freqs)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        result: FloatArray = np.where(medium, smoothed, scaled)
        return result
    raise ValueError(f"unsupported RoPE scaling type {kind!r}")


def _pair_indices(params: Mapping[str, Any]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    half = int(params["rotary_dim"]) // 2
    idx = np.arange(half)
    if params["layout"] == "neox":
        return idx, idx + half
    if params["layout"] == "interleaved":
        return 2 * idx, 2 * idx + 1
    raise ValueError(f"unknown RoPE layout {params['layout']!r}")


def _rotate(
    x: npt.ArrayLike, positions: npt.ArrayLike, params: Mapping[str, Any], sign: float
) -> FloatArray:
    arr = np.array(x, dtype=np.float64)  # a copy: the input is never modified
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 1 or arr.ndim < 2 or arr.shape[0] != pos.shape[0]:
        raise ValueError(
            f"expected x of shape [tokens, ..., head_dim] and positions [tokens], got "
            f"{arr.shape} and {pos.shape}"
        )
    if int(params["rotary_dim"]) > arr.shape[-1]:
        raise ValueError(f"rotary_dim {params['rotary_dim']} exceeds head_dim {arr.shape[-1]}")
    freqs = inv_freq(params)
    # [tokens, 1, ..., 1, rotary_dim/2], broadcasting over the middle axes of x
    angles = np.outer(pos, freqs).reshape((arr.shape[0],) + (1,) * (arr.ndim - 2) + freqs.shape)
    cos = np.cos(angles)
    sin = sign * np.sin(angles)
    first, second = _pair_indices(params)
    a = arr[..., first]
    b = arr[..., second]
    arr[..., first] = a * cos - b * sin
    arr[..., second] = b * cos + a * sin
    return arr


def apply_rope(x: npt.ArrayLike, positions: npt.ArrayLike, params: Mapping[str, Any]) -> FloatArray:
    """Rotate ``x`` ([tokens, ..., head_dim]) to ``positions`` ([tokens]); returns float64."""
    return _rotate(x, positions, params, 1.0)


def remove_rope(
    x: npt.ArrayLike, positions: npt.ArrayLike, params: Mapping[str, Any]
) -> FloatArray:
    """Undo :func:`apply_rope` at the same ``positions``; returns float64."""
    return _rotate(x, positions, params, -1.0)
