"""RoPE reference: exact inverse, canonical config parsing, agreement with transformers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from kvtc_connector.rope import apply_rope, inv_freq, remove_rope, rope_params_from_config

STORIES_HF = "/work/shared/models/stories260K/hf"

LLAMA3 = {
    "type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

CASES: dict[str, dict[str, Any]] = {
    "neox": {"theta": 10000.0, "rotary_dim": 64, "layout": "neox", "scaling": {"type": "default"}},
    "interleaved": {
        "theta": 10000.0,
        "rotary_dim": 64,
        "layout": "interleaved",
        "scaling": {"type": "default"},
    },
    "partial-neox": {
        "theta": 10000.0,
        "rotary_dim": 16,
        "layout": "neox",
        "scaling": {"type": "default"},
    },
    "partial-interleaved": {
        "theta": 500000.0,
        "rotary_dim": 32,
        "layout": "interleaved",
        "scaling": {"type": "default"},
    },
    "llama3": {"theta": 500000.0, "rotary_dim": 64, "layout": "neox", "scaling": LLAMA3},
    "linear": {
        "theta": 10000.0,
        "rotary_dim": 64,
        "layout": "neox",
        "scaling": {"type": "linear", "factor": 4.0},
    },
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_then_remove_is_identity(name: str) -> None:
    params = CASES[name]
    rng = np.random.default_rng(7)
    tokens = 37
    x = rng.standard_normal((tokens, 3, 2, 64))
    positions = np.concatenate([np.arange(20), rng.integers(0, 131072, size=tokens - 20)])
    rotated = apply_rope(x, positions, params)
    assert not np.allclose(rotated, x)  # it does rotate something
    np.testing.assert_allclose(remove_rope(rotated, positions, params), x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        apply_rope(remove_rope(x, positions, params), positions, params), x, rtol=0, atol=1e-12
    )
    # Rotations keep the norm of every head vector and leave dims >= rotary_dim alone.
    np.testing.assert_allclose(
        np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12
    )
    r = params["rotary_dim"]
    np.testing.assert_array_equal(rotated[..., r:], x[..., r:])


def test_position_zero_is_identity() -> None:
    x = np.random.default_rng(1).standard_normal((1, 4, 8))
    params = rope_params_from_config({"rope_theta": 10000.0, "head_dim": 8})
    np.testing.assert_array_equal(apply_rope(x, [0], params), x)


def test_interleaved_is_neox_on_permuted_dims() -> None:
    # interleaved pairs (2i, 2i+1) == neox pairs (i, i+r/2) after moving even dims to the front
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 2, 16))
    positions = np.arange(100, 109)
    neox = dict(CASES["neox"], rotary_dim=16)
    inter = dict(CASES["interleaved"], rotary_dim=16)
    perm = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])
    np.testing.assert_allclose(
        apply_rope(x, positions, inter)[..., perm],
        apply_rope(x[..., perm], positions, neox),
        atol=1e-12,
    )


def test_llama3_inv_freq_bands() -> None:
    params = CASES["llama3"]
    base = 1.0 / params["theta"] ** (np.arange(0, 64, 2) / 64)
    scaled = inv_freq(params)
    wavelen = 2 * math.pi / base
    high = wavelen < 8192 / 4  # short wavelengths: unchanged
    low = wavelen > 8192 / 1  # long wavelengths: divided by factor
    np.testing.assert_allclose(scaled[high], base[high])
    np.testing.assert_allclose(scaled[low], base[low] / 8.0)
    mid = ~high & ~low
    assert mid.any()
    assert np.all(scaled[mid] < base[mid]) and np.all(scaled[mid] > base[mid] / 8.0)


# --- canonical parameters from configs ------------------------------------------------------


def test_params_from_transformers4_style_dict() -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    assert rope_params_from_config(config) == dict(CASES["llama3"], rotary_dim=128)


def test_params_from_transformers5_style_dict() -> None:
    config = {
        "model_type": "llama",
        "head_dim": 64,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0},
    }
    assert rope_params_from_config(config) == CASES["linear"]


def test_params_partial_rotary_and_layout() -> None:
    config = {
        "model_type": "glm",
        "head_dim": 128,
        "partial_rotary_factor": 0.5,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    }
    params = rope_params_from_config(config)
    assert params == {
        "theta": 10000.0,
        "rotary_dim": 64,
        "layout": "interleaved",
        "scaling": {"type": "default"},
    }
    assert rope_params_from_config(config, layout="neox")["layout"] == "neox"


def test_legacy_type_key_and_llama3_fallback_context() -> None:
    config = {
        "head_dim": 64,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        },
    }
    scaling = rope_params_from_config(config)["scaling"]
    assert scaling["original_max_position_embeddings"] == 131072


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope", "mrope-nonsense"])
def test_unknown_scaling_type_raises(rope_type: str) -> None:
    config = {"head_dim": 64, "rope_parameters": {"rope_theta": 1e4, "rope_type": rope_type}}
    with pytest.raises(ValueError, match=rope_type):
        rope_params_from_config(config)


def test_per_layer_type_parameters() -> None:
    same = {"rope_theta": 1e4, "rope_type": "default"}
    config: dict[str, Any] = {
        "head_dim": 8,
        "rope_parameters": {"full_attention": dict(same), "sliding_attention": dict(same)},
    }
    assert rope_params_from_config(config)["theta"] == 1e4
    config["rope_parameters"]["sliding_attention"]["rope_theta"] = 1e6
    with pytest.raises(ValueError, match="per-layer-type"):
        rope_params_from_config(config)


# --- agreement with transformers ------------------------------------------------------------


def test_llama3_and_linear_inv_freq_match_transformers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cases: tuple[dict[str, Any], ...] = (
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    )
    for rope_parameters in cases:
        config = transformers.LlamaConfig(
            hidden_size=256, num_attention_heads=4, rope_parameters=dict(rope_parameters)
        )
        ours = inv_freq(rope_params_from_config(config))
        theirs, attention_factor = ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, None)
        assert attention_factor == 1.0
        # transformers computes in float32
        np.testing.assert_allclose(ours, theirs.to(torch.float64).numpy(), rtol=1e-6)


def test_neox_matches_transformers_llama_on_stories260k() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = transformers.AutoConfig.from_pretrained(STORIES_HF, local_files_only=True)
    params = rope_params_from_config(config)
    assert params == {
        "theta": 10000.0,
        "rotary_dim": 8,
        "layout": "neox",
        "scaling": {"type": "default"},
    }

    rng = np.random.default_rng(11)
    tokens, heads, head_dim = 50, 4, 8
    positions = np.concatenate([np.arange(10), rng.integers(10, 512, size=tokens - 10)])
    x = rng.standard_normal((tokens, heads, head_dim))

    rotary = LlamaRotaryEmbedding(config=config)
    xt = torch.tensor(x, dtype=torch.float32).permute(1, 0, 2)[None]  # [1, heads, T, D]
    pos = torch.tensor(positions, dtype=torch.long)[None]
    cos, sin = rotary(xt, pos)
    q_rot, k_rot = apply_rotary_pos_emb(xt, xt, cos, sin)
    theirs = k_rot[0].permute(1, 0, 2).to(torch.float64).numpy()  # [T, heads, D]

    ours = apply_rope(x, positions, params)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)
    np.testing.assert_allclose(remove_rope(theirs, positions, params), x, rtol=0, atol=2e-5)


def test_interleaved_matches_transformers_cohere() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.cohere.modeling_cohere import (
        CohereRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    config = transformers.CohereConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0
    )
    params = rope_params_from_config(config)
    assert params["layout"] == "interleaved" and params["rotary_dim"] == 16

    rng = np.random.default_rng(5)
    positions = np.arange(0, 300, 7)
    x = rng.standard_normal((len(positions), 2, 16))
    rotary = CohereRotaryEmbedding(config=config)
    xt = torch.tensor(x, dtype=torch.float32).permute(1, 0, 2)[None]
    cos, sin = rotary(xt, torch.tensor(positions)[None])
    _, k_rot = apply_rotary_pos_emb(xt, xt, cos, sin)
    theirs = k_rot[0].permute(1, 0, 2).to(torch.float64).numpy()
    np.testing.assert_allclose(apply_rope(x, positions, params), theirs, rtol=0, atol=2e-5)
