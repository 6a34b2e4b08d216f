"""Shared test setup: never reach for a model hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
