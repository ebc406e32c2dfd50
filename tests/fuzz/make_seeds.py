#!/usr/bin/env python3
"""Writes a few small valid GGUF files (llama metadata, F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors, a
tiny BPE vocabulary, one with a rope_freqs tensor) into the directory given, as the fuzzer's seed corpus. Standard library only."""
import os
import struct
import sys

GGUF_STR, GGUF_U32, GGUF_F32, GGUF_BOOL, GGUF_ARR, GGUF_I32 = 8, 4, 6, 7, 9, 5


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, t, payload):
    return s(key) + struct.pack("<I", t) + payload


def make(path, ttype, dim=32, hidden=64, vocab=8, align=32, tok=True, rope_freqs=False):
    meta = [
        kv("general.architecture", GGUF_STR, s("llama")),
        kv("general.alignment", GGUF_U32, struct.pack("<I", align)),
        kv("llama.embedding_length", GGUF_U32, struct.pack("<I", dim)),
        kv("llama.feed_forward_length", GGUF_U32, struct.pack("<I", hidden)),
        kv("llama.block_count", GGUF_U32, struct.pack("<I", 1)),
        kv("llama.attention.head_count", GGUF_U32, struct.pack("<I", 2)),
        kv("llama.attention.head_count_kv", GGUF_U32, struct.pack("<I", 1)),
        kv("llama.context_length", GGUF_U32, struct.pack("<I", 64)),
        kv("llama.rope.freq_base", GGUF_F32, struct.pack("<f", 10000.0)),
    ]
    if tok:
        toks = ["a", "b", "Ġ", "ab", "<|im_start|>", "1", "Ġa", "!"][:vocab]
        meta += [
            kv("tokenizer.ggml.model", GGUF_STR, s("gpt2")),
            kv("tokenizer.ggml.pre", GGUF_STR, s("smollm")),
            kv("tokenizer.ggml.tokens", GGUF_ARR, struct.pack("<IQ", GGUF_STR, len(toks)) + b"".join(s(t) for t in toks)),
            kv("tokenizer.ggml.token_type", GGUF_ARR, struct.pack("<IQ", GGUF_I32, len(toks)) +
               b"".join(struct.pack("<i", 3 if t.startswith("<|") else 1) for t in toks)),
            kv("tokenizer.ggml.merges", GGUF_ARR, struct.pack("<IQ", GGUF_STR, 2) + s("a b") + s("Ġ a")),
            kv("tokenizer.ggml.bos_token_id", GGUF_U32, struct.pack("<I", 4)),
            kv("tokenizer.ggml.add_bos_token", GGUF_BOOL, b"\x01"),
        ]
    kvd = dim // 2
    shapes = [("token_embd.weight", [dim, vocab]), ("blk.0.attn_norm.weight", [dim]), ("blk.0.attn_q.weight", [dim, dim]),
              ("blk.0.attn_k.weight", [dim, kvd]), ("blk.0.attn_v.weight", [dim, kvd]), ("blk.0.attn_output.weight", [dim, dim]),
              ("blk.0.ffn_norm.weight", [dim]), ("blk.0.ffn_gate.weight", [dim, hidden]), ("blk.0.ffn_down.weight", [hidden, dim]),
              ("blk.0.ffn_up.weight", [dim, hidden]), ("output_norm.weight", [dim])]
    if rope_freqs:  # Llama 3.x's scaled RoPE as llama.cpp stores it: head_dim / 2 factors
        shapes.append(("rope_freqs.weight", [dim // 2 // 2]))
    sizes = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20)}
    infos, blobs, off = b"", [], 0
    for name, dims in shapes:
        t = 0 if len(dims) == 1 else ttype
        n = 1
        for d in dims:
            n *= d
        blk, bb = sizes[t]
        nbytes = n // blk * bb
        data = bytes((i * 37 + 11) % 251 for i in range(nbytes))
        if t == 0:
            data = struct.pack(f"<{n}f", *[1.0 + 0.01 * i for i in range(n)])
        infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", t, off)
        blobs.append((off, data))
        off = (off + nbytes + align - 1) // align * align
    head = struct.pack("<IIQQ", 0x46554747, 3, len(shapes), len(meta)) + b"".join(meta) + infos
    head += b"\0" * (-len(head) % align)
    body = bytearray(off)
    for o, d in blobs:
        body[o:o + len(d)] = d
    with open(path, "wb") as f:
        f.write(head + bytes(body))


out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for t, name in [(0, "f32"), (1, "f16"), (30, "bf16"), (8, "q8_0"), (2, "q4_0"), (3, "q4_1")]:
    make(os.path.join(out, f"seed_{name}.gguf"), t)
make(os.path.join(out, "seed_notok.gguf"), 3, tok=False)
make(os.path.join(out, "seed_rope_freqs.gguf"), 0, rope_freqs=True)
