"""Capture tool on the real stories260K model: layout, metadata, RoPE and values are exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from kvtc_connector.capture import main, read_texts
from kvtc_connector.fingerprint import model_fingerprint
from kvtc_connector.rope import apply_rope, remove_rope

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

STORIES_HF = Path("/work/shared/models/stories260K/hf")
pytestmark = pytest.mark.skipif(not STORIES_HF.is_dir(), reason="stories260K not available")

DOCS = [
    "Once upon a time, there was a little girl named Lily. She loved to play in the park "
    "with her red ball. One day, the ball rolled away, and Lily ran after it.",
    "Tom had a small dog named Max. Max liked to dig in the garden.",
    "The sun was warm. Ben and Mia went to the beach. They built a big sandcastle with four "
    "towers, and then a wave came and they laughed and laughed.",
]
SHAPE = (5, 4, 8)  # layers, kv_heads, head_dim


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with safe_open(str(path), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        metadata = json.loads(f.metadata()["kvtc_capture"])
    return tensors, metadata


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("capture")
    texts = root / "docs.txt"
    texts.write_text("\n---\n".join(DOCS) + "\n", encoding="utf-8")
    out = root / "out"
    assert main(["--model", str(STORIES_HF), "--texts", str(texts), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def model() -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(STORIES_HF), local_files_only=True
    ).eval()


def test_files_shapes_and_metadata(captured: Path) -> None:
    manifest = json.loads((captured / "manifest.json").read_text())
    assert [f["file"] for f in manifest["files"]] == [f"seq-{i:05d}.safetensors" for i in range(3)]
    assert (manifest["layers"], manifest["kv_heads"], manifest["head_dim"]) == SHAPE
    assert manifest["model"] == "stories260K"
    assert manifest["skipped"] == []
    rope = {"theta": 10000.0, "rotary_dim": 8, "layout": "neox", "scaling": {"type": "default"}}
    assert manifest["rope"] == rope
    shape_fields = {"layers": 5, "kv_heads": 4, "head_dim": 8, "rope": rope}
    assert manifest["model_fingerprint"] == model_fingerprint(STORIES_HF, shape_fields)

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(STORIES_HF), local_files_only=True)
    total = 0
    for index, entry in enumerate(manifest["files"]):
        tensors, meta = _read(captured / entry["file"])
        ids = tokenizer(DOCS[index])["input_ids"]
        tokens = len(ids)
        assert entry == {"file": entry["file"], "document": index, "tokens": tokens}
        assert set(tensors) == {"keys", "values", "positions", "input_ids"}
        assert tensors["keys"].shape == (tokens, *SHAPE)
        assert tensors["values"].shape == (tokens, *SHAPE)
        assert tensors["keys"].dtype == np.float32 and tensors["values"].dtype == np.float32
        assert tensors["positions"].dtype == np.int64 and tensors["input_ids"].dtype == np.int64
        np.testing.assert_array_equal(tensors["positions"], np.arange(tokens))
        np.testing.assert_array_equal(tensors["input_ids"], ids)
        assert tensors["input_ids"][0] == 1  # the tokenizer adds BOS
        assert meta == {
            "format": 1,
            "model": "stories260K",
            "model_fingerprint": manifest["model_fingerprint"],
            **shape_fields,
            "dtype": "float32",
            "compute_dtype": "float32",
            "document": index,
            "tokens": tokens,
        }
        total += tokens
    assert manifest["total_tokens"] == total


def test_keys_are_post_rope_at_recorded_positions(captured: Path, model: Any) -> None:
    meta_rope = json.loads((captured / "manifest.json").read_text())["rope"]
    for path in sorted(captured.glob("seq-*.safetensors")):
        tensors, _ = _read(path)
        keys, positions = tensors["keys"], tensors["positions"]
        # Removing RoPE and re-applying it returns the captured keys.
        unroped = remove_rope(keys, positions, meta_rope)
        np.testing.assert_allclose(apply_rope(unroped, positions, meta_rope), keys, atol=1e-6)

        # And the un-RoPE'd keys are exactly the pre-RoPE projections k_proj(norm(h)) of the
        # model: this pins down positions, theta and layout, not just invertibility.
        ids = torch.tensor(tensors["input_ids"])[None]
        with torch.inference_mode():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            for layer_index, layer in enumerate(model.model.layers):
                pre = layer.self_attn.k_proj(layer.input_layernorm(hidden[layer_index]))
                pre = pre[0].reshape(len(positions), 4, 8).to(torch.float64).numpy()
                np.testing.assert_allclose(unroped[:, layer_index], pre, rtol=0, atol=2e-5)
        # Not vacuous: the captured keys differ from the un-RoPE'd ones past position 0.
        assert np.abs(unroped[1:] - keys[1:]).max() > 1e-2


def test_values_match_an_independent_forward_pass(captured: Path, model: Any) -> None:
    for path in sorted(captured.glob("seq-*.safetensors")):
        tensors, _ = _read(path)
        ids = torch.tensor(tensors["input_ids"])[None]
        with torch.inference_mode():
            cache = model(input_ids=ids, use_cache=True).past_key_values
        for layer_index, layer in enumerate(cache.layers):
            expected_v = layer.values[0].permute(1, 0, 2).numpy()  # [T, kv_heads, head_dim]
            expected_k = layer.keys[0].permute(1, 0, 2).numpy()
            np.testing.assert_allclose(tensors["values"][:, layer_index], expected_v, atol=1e-6)
            np.testing.assert_allclose(tensors["keys"][:, layer_index], expected_k, atol=1e-6)


def test_truncation_skip_and_jsonl(tmp_path: Path) -> None:
    texts = tmp_path / "docs.jsonl"
    lines = [{"text": DOCS[0]}, {"text": "Hi."}, {"text": DOCS[2]}]
    texts.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["--model", str(STORIES_HF), "--texts", str(texts), "--out", str(out)]
    assert main([*args, "--max-tokens", "12"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["document"] for f in manifest["files"]] == [0, 2]
    assert [f["tokens"] for f in manifest["files"]] == [12, 12]
    assert manifest["skipped"] == [{"document": 1, "tokens": manifest["skipped"][0]["tokens"]}]
    assert manifest["skipped"][0]["tokens"] < 8
    # A second run into the same folder needs --overwrite.
    assert main([*args, "--max-tokens", "12"]) == 2
    assert main([*args, "--max-tokens", "12", "--overwrite"]) == 0


def test_read_texts_separator(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("a b\n---\n\n---\nc\n--- \nd\n", encoding="utf-8")
    assert read_texts(path) == ["a b", "c", "d"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvtc_connector.capture", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_cli_help() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    assert "--max-tokens" in result.stdout and "--min-tokens" in result.stdout


def test_cli_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    texts = tmp_path / "docs.txt"
    texts.write_text(DOCS[0], encoding="utf-8")
    missing = tmp_path / "no-such-model"
    result = _cli("--model", str(missing), "--texts", str(texts), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(missing) in result.stderr

    empty = tmp_path / "empty.txt"
    empty.write_text("\n---\n  \n", encoding="utf-8")
    result = _cli("--model", str(STORIES_HF), "--texts", str(empty), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert str(empty) in result.stderr and "no documents" in result.stderr


def test_unknown_rope_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    config = json.loads((STORIES_HF / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}
    (model_dir / "config.json").write_text(json.dumps(config))
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).symlink_to(STORIES_HF / name)
    texts = tmp_path / "docs.txt"
    texts.write_text(DOCS[0], encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--texts", str(texts), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(model_dir) in err and "'yarn'" in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())
