#!/usr/bin/env python3
"""Greedy batch-1 decode of a GGUF in llama.cpp (through llama-cpp-python), for a same-machine,
same-file, same-threads comparison with `ablate generate`. Prints one line in ablate generate's
words: prompt tokens, tokens generated, decode tok/s (llama.cpp's own eval timer, which leaves
each llm.eval call on its own, so the argmax in Python is left out; what is left in is
llama-cpp-python's copy of the logits, some 20 us a step), and the text.

    /tmp/llama_venv/bin/python experiments/llamacpp_decode.py models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --prompt "The capital of France is" -n 48 --threads 2
(experiments/requant_smollm2.py says how to install llama-cpp-python.)
"""
import argparse
import os
import time

import llama_cpp
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("-n", type=int, default=48, help="tokens to generate (greedy; EOS does not stop it)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = ap.parse_args()
    llm = llama_cpp.Llama(a.model, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads, logits_all=True, verbose=False)
    prompt = llm.tokenize(a.prompt.encode(), add_bos=False, special=True)
    llm.eval(prompt)
    out, seconds = [], 0.0
    for _ in range(a.n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        t0 = time.perf_counter()
        llm.eval([tok])  # the decode steps alone, as ablate's decode tok/s
        seconds += time.perf_counter() - t0
    text = llm.detokenize(out).decode(errors="replace")
    print(f"[llama.cpp {llama_cpp.__version__}, {os.path.basename(a.model)}, {a.threads} threads: prompt {len(prompt)} tokens; "
          f"{a.n} tokens decoded in {1000 * seconds:.1f} ms; decode {a.n / seconds:.1f} tok/s] {text!r}")


if __name__ == "__main__":
    main()
