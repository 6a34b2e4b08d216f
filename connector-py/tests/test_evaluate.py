"""evaluate end to end on stories260K: capture -> calibrate (sidecar) -> evaluate -> plot."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvtc_connector import capture, evaluate, plot_quality
from kvtc_connector.capture import read_texts

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
SIDECAR = REPO / "dist" / "src" / "main.js"
STORIES_HF = Path("/work/shared/models/stories260K/hf")
DATA = Path(capture.__file__).parent / "data"
pytestmark = [
    pytest.mark.skipif(not STORIES_HF.is_dir(), reason="stories260K not available"),
    pytest.mark.skipif(
        shutil.which("node") is None or not SIDECAR.is_file(), reason="sidecar not built"
    ),
]

FIELDS = {
    "method",
    "target_ratio",
    "achieved_ratio",
    "achieved_ratio_compressed",
    "key_rel_err",
    "value_rel_err",
    "attn_rel_err",
    "top1_agreement",
    "kl",
    "ppl",
    "ppl_base",
}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("evaluate")
    calib_texts = root / "calib.txt"
    calib_texts.write_text("\n---\n".join(read_texts(DATA / "stories-calib.txt")[:3]) + "\n")
    eval_texts = root / "eval.txt"
    eval_texts.write_text("\n---\n".join(read_texts(DATA / "stories-eval.txt")[:2]) + "\n")
    kv = root / "kv"
    assert capture.main(
        ["--model", str(STORIES_HF), "--texts", str(calib_texts), "--out", str(kv),
         "--max-tokens", "256"]
    ) == 0  # fmt: skip
    cal = root / "cal.safetensors"
    subprocess.run(
        ["node", str(SIDECAR), "calibrate", "--kv", str(kv), "--out", str(cal),
         "--ratios", "4,16", "--window-tokens", "16"],
        check=True, capture_output=True,
    )  # fmt: skip
    out = root / "eval.json"
    assert evaluate.main(
        ["--model", str(STORIES_HF), "--calibration", str(cal), "--texts", str(eval_texts),
         "--ratios", "4,16", "--json", str(out), "--max-tokens", "160",
         "--window-tokens", "16", "--reference", "--quiet", "--projections", "fp32,fp8"]
    ) == 0  # fmt: skip
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc, root


def _row(doc: dict[str, Any], method: str, target: float | None = None) -> dict[str, Any]:
    rows = [
        r for r in doc["results"]
        if r["method"] == method and (target is None or r["target_ratio"] == target)
    ]  # fmt: skip
    assert len(rows) == 1, (method, target, doc["results"])
    row: dict[str, Any] = rows[0]
    return row


def test_schema(result: tuple[dict[str, Any], Path]) -> None:
    doc, _ = result
    assert set(doc) == {"model", "calibration_id", "tokens", "results"}
    assert doc["model"] == "stories260K"
    assert len(doc["calibration_id"]) == 32
    assert doc["tokens"] == 2 * (160 - 120)  # two documents, 40 continuation tokens each
    for row in doc["results"]:
        assert set(row) == FIELDS
        assert row["method"] in (*evaluate.METHODS, "none")
        for key in FIELDS - {"method", "target_ratio", "achieved_ratio_compressed"}:
            assert isinstance(row[key], float), (key, row)
    methods = sorted((r["method"], r["target_ratio"]) for r in doc["results"])
    assert methods == sorted(
        [("kvtc", 4.0), ("kvtc", 16.0), ("kvtc-fp8-proj", 4.0), ("kvtc-fp8-proj", 16.0),
         ("poc", 4.0), ("poc", 16.0), ("fp8", 2.0), ("kivi2", 8.0), ("none", 1.0)]
    )  # fmt: skip


def test_reference_ppl_equals_base(result: tuple[dict[str, Any], Path]) -> None:
    doc, _ = result
    none = _row(doc, "none")
    assert none["ppl"] == pytest.approx(none["ppl_base"], rel=1e-12)
    assert none["kl"] == pytest.approx(0.0, abs=1e-12)
    assert none["top1_agreement"] == 1.0
    assert none["key_rel_err"] == 0.0 and none["attn_rel_err"] == 0.0
    # every row compares against the same uncompressed perplexity
    assert len({r["ppl_base"] for r in doc["results"]}) == 1


def test_fp8_close_to_reference(result: tuple[dict[str, Any], Path]) -> None:
    fp8 = _row(result[0], "fp8")
    assert fp8["top1_agreement"] > 0.9
    assert fp8["achieved_ratio"] == pytest.approx(2.0)
    assert fp8["key_rel_err"] < 0.05


def test_fp8_projection_costs_little(result: tuple[dict[str, Any], Path]) -> None:
    """fp8 GEMM operands add a little error to the plan's, never change the bytes stored."""
    for target in (4.0, 16.0):
        kvtc, fp8 = _row(result[0], "kvtc", target), _row(result[0], "kvtc-fp8-proj", target)
        assert fp8["achieved_ratio"] == pytest.approx(kvtc["achieved_ratio"], rel=0.02)
        for key in ("key_rel_err", "value_rel_err"):
            assert kvtc[key] <= fp8[key] < 1.25 * kvtc[key], (target, key, kvtc[key], fp8[key])


def test_kvtc_error_grows_with_ratio(result: tuple[dict[str, Any], Path]) -> None:
    doc, _ = result
    k4, k16 = _row(doc, "kvtc", 4.0), _row(doc, "kvtc", 16.0)
    assert 0 < k4["key_rel_err"] < k16["key_rel_err"]
    assert k4["value_rel_err"] < k16["value_rel_err"]
    assert k4["achieved_ratio_compressed"] < k16["achieved_ratio_compressed"]
    # prefix 120 tokens, 4 sinks + 16 window tokens raw
    assert k16["achieved_ratio"] < k16["achieved_ratio_compressed"]


def test_kivi2_short_prefix_is_all_residual(result: tuple[dict[str, Any], Path]) -> None:
    kivi = _row(result[0], "kivi2")  # a 120-token prefix fits in KIVI's 128-token residual
    assert kivi["achieved_ratio"] == pytest.approx(1.0)
    assert kivi["achieved_ratio_compressed"] is None
    assert kivi["kl"] == pytest.approx(0.0, abs=1e-9)


def test_plot(result: tuple[dict[str, Any], Path]) -> None:
    _, root = result
    out = root / "quality-test"
    assert plot_quality.main(["--json", str(root / "eval.json"), "--out", str(out)]) == 0
    assert (root / "quality-test.png").stat().st_size > 1000
    assert (root / "quality-test.svg").read_text().lstrip().startswith("<?xml")


def test_unknown_ratio_is_a_usage_error(
    result: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, root = result
    code = evaluate.main(
        ["--model", str(STORIES_HF), "--calibration", str(root / "cal.safetensors"),
         "--texts", str(root / "eval.txt"), "--ratios", "8", "--json", str(root / "x.json"),
         "--quiet", "--no-poc"]
    )  # fmt: skip
    assert code == 2
    assert "no plan for ratio(s) 8" in capsys.readouterr().err
