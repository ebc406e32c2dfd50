#!/usr/bin/env python3
"""Requantizes models/SmolLM2-135M-Instruct.Q4_1.gguf with llama.cpp's own quantizer into
models/SmolLM2-135M-Instruct.<TYPE>.requant.gguf (git-ignored): real files of the tensor types
llama.cpp writes (Q4_K_M: Q5_0, Q8_0, Q4_K and Q6_K on this model, whose 576-wide rows are not
multiples of 256; Q5_K_M: Q5_1, Q5_K and Q6_K; IQ4_XS: IQ4_NL and IQ4_XS; ...), for checking
ablate's loader and `dtype: native` against them. Requantizing from 4 bits loses quality: these
files test decoding, not the model.

Needs llama-cpp-python (built from PyPI's source, about 10 minutes on 2 cores):
    python3 -m venv /tmp/llama_venv
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" /tmp/llama_venv/bin/pip install llama-cpp-python==0.3.36
    /tmp/llama_venv/bin/python experiments/requant_smollm2.py Q4_K_M Q5_K_M Q4_0

Then, for each file, an outside reference and ablate against it:
    /tmp/gguf_venv/bin/python tests/fixtures/make_smollm2_fixture.py FILE > /tmp/ref.json
    ABLATE_REQUANT_GGUF=FILE ABLATE_REQUANT_REFERENCE=/tmp/ref.json build/default/tests/ablate_tests "[requant]"
"""
import ctypes
import os
import sys

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    types = sys.argv[1:] or ["Q4_K_M"]
    allowed = sorted(n[len("LLAMA_FTYPE_MOSTLY_"):] for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
    for t in types:
        if t not in allowed:
            sys.exit(f"requant_smollm2: unknown type {t}; allowed: {', '.join(allowed)}")
    if not os.path.exists(SOURCE):
        sys.exit(f"requant_smollm2: {SOURCE} is missing; run experiments/fetch_smollm2.sh")
    for t in types:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{t}")
        params.allow_requantize = True
        dst = os.path.join(ROOT, "models", f"SmolLM2-135M-Instruct.{t}.requant.gguf")
        tmp = dst + ".tmp"
        rc = llama_cpp.llama_model_quantize(SOURCE.encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            sys.exit(f"requant_smollm2: llama_model_quantize({t}) returned {rc}")
        os.replace(tmp, dst)  # never a half-written file under the final name
        print(dst)


if __name__ == "__main__":
    main()
