#!/usr/bin/env python3
"""Writes the committed seed corpora of the libFuzzer harnesses into tests/fuzz/corpus/<name>/
(run once; the files are committed). Standard library only. The GGUF seeds are not here:
run_fuzz.sh writes them with make_seeds.py at each run."""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SHARED = os.environ.get("ABLATE_SHARED", os.path.join(ROOT, "..", "shared"))


def put(name, fname, data):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, fname), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# config: YAML text, then NUL-separated --set overrides (configs/ are seeds too).
put("config", "overrides", "experiment: fz\nmodel: {preset: tiny}\n\0kv.memory_mb=64\0sweep.scheduler.max_batch=[1,2]")
put("config", "prompt_len_map", "experiment: fz\n\0workload.prompt_len={dist: uniform, min: 8, max: 64}\0slo.preset=interactive")
put("config", "sweep_two", "experiment: fz\nsweep:\n  kv.layout: [contiguous, paged]\n  attention: [naive, flash]\n")
put("config", "llama2c", "experiment: fz\nmodel:\n  source: llama2c\n  path: ${shared}/models/stories260K.bin\n"
    "  tokenizer: ${shared}/models/tok512.bin\nworkload:\n  prompts: configs/prompts/short_prompts.txt\n")
put("config", "trace", "experiment: fz\nworkload:\n  requests: 4\n  arrival: trace\n  trace: {path: ${shared}/traces/"
    "AzureLLMInferenceTrace_conv.csv, time_scale: 0.5}\n  prompt_len: {dist: trace}\n  output_len: {dist: trace}\n")
put("config", "bad_key", "experiment: fz\nkv:\n  memroy_mb: 64\n")
put("config", "numbers", "experiment: fz\nkv: {memory_mb: 1.5e3, block_size: 16}\nscheduler: {max_batch: 0x10}\n"
    "sampling: {temperature: .inf}\n")


# llama2c: small checkpoints (legacy header of 7 int32, then fp32 tensors, RoPE tables included).
def ckpt(dim, hidden, layers, heads, kv_heads, vocab, seq):
    hd = dim // heads
    kv = kv_heads * hd
    V = abs(vocab)
    n = V * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) + dim + seq * hd
    if vocab < 0:
        n += V * dim
    return struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq) + struct.pack(
        f"<{n}f", *[((i * 37) % 101 - 50) / 100.0 for i in range(n)])


put("llama2c", "tied", ckpt(8, 16, 1, 2, 1, 8, 4))
put("llama2c", "untied", ckpt(8, 12, 2, 2, 2, -6, 2))
put("llama2c", "header_only", struct.pack("<7i", 64, 172, 5, 8, 4, 512, 512))
put("llama2c", "short", b"\x08\x00\x00")


# llama2c_tokenizer: u16 vocab, u16 text length, text, tokenizer file.
def tok_file(pieces):
    out = struct.pack("<i", max(len(p) for p in pieces))
    for i, p in enumerate(pieces):
        b = p.encode()
        out += struct.pack("<fi", -float(i), len(b)) + b
    return out


def tok_seed(vocab, text, body):
    t = text.encode()
    return struct.pack("<HH", vocab, len(t)) + t + body


small = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [" ", "a", "b", "ab", " a", "é", "ab "]
put("llama2c_tokenizer", "small", tok_seed(len(small), "ab a bé\xff!", tok_file(small)))
put("llama2c_tokenizer", "tiny_vocab", tok_seed(5, "aab ba", tok_file(["<unk>", "<s>", "</s>", "a", "b"])))
tok512 = os.path.join(SHARED, "models", "tok512.bin")
if os.path.exists(tok512):
    with open(tok512, "rb") as f:
        put("llama2c_tokenizer", "tok512", tok_seed(512, "Once upon a time, Lily saw a dog. Zürich 123", f.read()))
else:
    print(f"make_corpora: {tok512} not found; llama2c_tokenizer seed tok512 not written", file=sys.stderr)

# trace: byte start_row, byte count (value % 16 - 1), CSV.
azure = os.path.join(SHARED, "traces", "AzureLLMInferenceTrace_conv.csv")
if os.path.exists(azure):
    with open(azure, "rb") as f:
        head = b"".join(f.readline() for _ in range(12))
    put("trace", "azure_conv_head", b"\x00\x05" + head)
    put("trace", "azure_to_end", b"\x02\x00" + head)
put("trace", "bom_crlf", b"\x00\x03\xef\xbb\xbfTIMESTAMP,ContextTokens,GeneratedTokens\r\n"
    b"2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16T18:15:50,396,109\r\n\r\n2023-11-16 18:15:50.1,1,0\r\n")
put("trace", "reordered", b"\x01\x02generatedtokens, extra ,contexttokens,timestamp\n1,x,2,1999-12-31 23:59:60.999999999\n"
    b"3,y,4,2000-01-01 00:00:00\n5,z,6,2000-02-29 12:00:00.5\n")

# prompts: byte format (low bit 1 = JSONL), file.
put("prompts", "text", b"\x00Once upon a time\n\n  \t\nThe capital of France is\r\nZ\xc3\xbcrich \xff\n")
put("prompts", "jsonl", b'\x01{"prompt": "Hello"}\n"a bare string"\n\n{"text": "t", "id": 3}\n{"prompt": "a\\nb \\u00fc"}\n')
put("prompts", "jsonl_bad", b'\x01{"prompt": ["x"]}\n')

# bpe: flags byte (1: parse specials, 2: gpt2 pre-tokenizer, 4: vocabulary without some bytes), text.
put("bpe", "specials", b"\x01Hello, world! 123 <|im_start|>user\nZ\xc3\xbcrich<|im_end|>")
put("bpe", "gpt2", b"\x02the thing's   \t\n  digits 12345 and \xe2\x80\xa8 \xf0\x9f\x98\x80!")
put("bpe", "invalid_utf8", b"\x04\xff\xfe\xc3(\xe2\x82 \xf5\x00abc")
put("bpe", "cjk", "\x00日本語のテキスト、１２３。 Ελληνικά".encode())
