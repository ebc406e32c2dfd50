#!/usr/bin/env python3
"""Every tensor of the given ggml types in a real GGUF, decoded by ablate's loader
(build/default/experiments/dequantize_gguf) and by PyPI gguf's numpy decoder: the count of values
that differ (0 expected: both follow ggml's formulas and their order of float operations).
Needs PyPI gguf (see tests/fixtures/make_quant_fixture.py for the venv):
    /tmp/gguf_venv/bin/python experiments/check_decode.py models/SmolLM2-135M-Instruct.IQ3_S.requant.gguf IQ3_S IQ4_NL"""
import os
import subprocess
import sys
import tempfile

import gguf
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: check_decode.py FILE.gguf TYPE [TYPE ...]")
    path, types = sys.argv[1], sys.argv[2:]
    tool = os.path.join(os.environ.get("ABLATE_BUILD", os.path.join(ROOT, "build", "default")), "experiments", "dequantize_gguf")
    reader = gguf.GGUFReader(path)
    bad = 0
    for name in types:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "values.f32")
            subprocess.run([tool, path, name, out], check=True, stdout=subprocess.DEVNULL)
            ours = np.fromfile(out, dtype=np.float32)
        at, tensors, differ = 0, 0, 0
        for t in reader.tensors:
            if t.tensor_type.name != name:
                continue
            ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            differ += int(np.count_nonzero(ours[at:at + ref.size] != ref))
            at += ref.size
            tensors += 1
        if at != ours.size:
            differ += abs(ours.size - at)
        print(f"{name}: {tensors} tensors, {at} values, {differ} differ")
        bad += differ
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
