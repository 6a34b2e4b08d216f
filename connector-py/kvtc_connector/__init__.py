"""kvtc-connector: Python side of kvtc-sidecar (KV-cache capture, RoPE reference, fingerprint)."""

__version__ = "0.1.0"
