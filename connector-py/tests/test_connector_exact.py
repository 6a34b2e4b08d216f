"""End to end, lossless: a restore through the connector is bit-exact with vLLM's own prefix cache.

The lossy e2e test (test_connector_e2e.py) compares a restored request with a fresh computation of
the whole prompt. Those two differ for two reasons: the codec's error, and vLLM computing the
prompt in another split (512 cached + the rest, against all tokens in one forward), which changes
bf16 rounding in the attention and the matmuls. This test removes the first reason: the sidecar
keeps every position raw (``sinkTokens`` covers the whole context, so records hold the exact bf16
that was saved), and the connector's restore is compared with the same split served by vLLM's OWN
prefix cache. Those must agree exactly: the same tokens and the same top-5 logprobs, bit for bit.
A wrong position, block, layer order, K/V swap or chunk would show here as a difference.

One engine, vLLM's prefix cache on, with the connector. Per prompt pair (two places in the text):

1. ``first`` (600 tokens): computed, saves chunks 0 and 1 (512 tokens) to the sidecar; vLLM's
   own cache keeps its 4 full blocks (the same 512 tokens).
2. ``second`` (700 tokens, same prefix): vLLM's own prefix cache gives the 512 tokens (the
   connector is asked for tokens beyond them and has none: only 2 full chunks exist).
3. ``reset_prefix_cache()``: vLLM forgets its blocks (the sidecar keeps the chunks).
4. ``second`` again: vLLM's cache misses, the connector loads the 512 tokens.
5. ``second`` with ``skip_reading_prefix_cache``: every token computed in one prefill (reported).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_utils import Sidecar, require_inputs, start_sidecar, vllm_engine

from kvtc_connector.client import SidecarClient

pytestmark = pytest.mark.slow

CHUNK = 256
MAX_TOKENS = 24
LOGPROBS = 5
# (offset in the text, tokens of the first prompt, tokens of the second)
PAIRS = {"start": (0, 600, 700), "middle": (1000, 600, 700)}


@pytest.fixture(scope="module")
def lossless_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    require_inputs()
    folder = tmp_path_factory.mktemp("exact")
    config = folder / "serve.json"
    # The codec keeps the first sinkTokens positions of a sequence raw: all of them here.
    config.write_text(json.dumps({"sinkTokens": 1 << 20}))
    s = start_sidecar("--config", str(config), folder=folder)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def llm(lossless_sidecar: Sidecar) -> Iterator[Any]:
    with vllm_engine(
        lossless_sidecar.endpoint,
        prefix_caching=True,
        chunk_tokens=CHUNK,
        window_tokens=0,
        timeout_ms=10000,
    ) as engine:
        yield engine


def generate(llm: Any, ids: list[int], *, skip_reading: bool = False) -> dict[str, Any]:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        logprobs=LOGPROBS,
        skip_reading_prefix_cache=skip_reading,
    )
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    c = out.outputs[0]
    assert c.logprobs is not None
    top = [
        sorted(((int(t), float(lp.logprob)) for t, lp in d.items()), key=lambda x: (-x[1], x[0]))
        for d in c.logprobs
    ]
    return {"tokens": list(c.token_ids), "cached": out.num_cached_tokens, "top": top}


def first_divergence(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """Where two greedy runs first pick different tokens, with both runs' top-2 margins there."""
    for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"], strict=False)):
        if x != y:
            ma = a["top"][i][0][1] - a["top"][i][1][1]
            mb = b["top"][i][0][1] - b["top"][i][1][1]
            return {"index": i, "tokens": (x, y), "margins": (round(ma, 4), round(mb, 4))}
    return None


@pytest.mark.parametrize("pair", list(PAIRS))
def test_lossless_restore_equals_vllm_prefix_cache(
    llm: Any, lossless_sidecar: Sidecar, pair: str, capsys: pytest.CaptureFixture[str]
) -> None:
    offset, n_first, n_second = PAIRS[pair]
    text = (Path(__file__).parents[1] / "kvtc_connector/data/general-eval.txt").read_text()
    ids: list[int] = llm.get_tokenizer().encode(text)
    first, second = ids[offset : offset + n_first], ids[offset : offset + n_second]

    assert generate(llm, first)["cached"] == 0
    own = generate(llm, second)  # the 512-token prefix from vLLM's own prefix cache
    assert own["cached"] == 2 * CHUNK
    assert llm.reset_prefix_cache()
    with SidecarClient(lossless_sidecar.endpoint, timeout_ms=10000) as c:
        before = c.stats()
    restored = generate(llm, second)  # the same prefix loaded by the connector
    with SidecarClient(lossless_sidecar.endpoint, timeout_ms=10000) as c:
        after = c.stats()
    assert restored["cached"] == 2 * CHUNK
    assert after.bytes_out - before.bytes_out == 2 * CHUNK * 2 * 5760 * 2
    # Lossless: the store holds at least the raw bytes it was given (raw frames plus headers).
    assert after.stores[0].bytes >= after.bytes_in
    fresh = generate(llm, second, skip_reading=True)
    assert fresh["cached"] == 0

    with capsys.disabled():
        print(
            f"\nkvtc lossless {pair}: restored == vLLM prefix cache: "
            f"{restored['tokens'] == own['tokens'] and restored['top'] == own['top']}; "
            f"restored vs one-prefill: {first_divergence(restored, fresh)}; "
            f"token 0 top-2 restored {restored['top'][0][:2]} one-prefill {fresh['top'][0][:2]}"
        )
    assert restored["tokens"] == own["tokens"], first_divergence(restored, own)
    assert restored["top"] == own["top"]  # top-5 logprobs, bit for bit
