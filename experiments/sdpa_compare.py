#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention (flash backend) on the shapes bench_attention_cuda times,
printed as CSV so the two can sit side by side (GPU machine; needs torch with CUDA).

  python3 experiments/sdpa_compare.py [--dtype bf16|fp16] [--reps 20] [--kinds prefill,decode] > sdpa.csv

Rows: kind (prefill: causal, n_q = ctx; decode: 1 query over ctx keys, no mask), shape
(smollm2-135m: 9 heads / 3 KV heads, head_dim 64; llama2-7b: 32 / 32, 128), ctx, batch, dtype,
backend, median ms (CUDA events), TFLOP/s (useful causal FLOPs, 4*head_dim per visible
(query, key, head), as bench_attention_cuda counts them) and GB/s (K+V bytes, for decode).
GQA K/V are expanded to the query heads before timing (the flash backend wants equal heads), so
decode GB/s counts the unexpanded K/V bytes, as the CUDA benchmark does.
"""
import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

SHAPES = {"smollm2-135m": (9, 3, 64), "llama2-7b": (32, 32, 128)}


def sdpa_context():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION]), "flash"
    except ImportError:  # older torch
        return torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False), "flash"


def time_ms(fn, reps):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--kinds", default="prefill,decode", help="comma-separated: prefill, decode")
    args = ap.parse_args()
    kinds = set(args.kinds.split(","))
    if not torch.cuda.is_available():
        print("sdpa_compare: SKIPPED: no CUDA device", file=sys.stderr)
        return 0
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    dev = torch.device("cuda")
    print(f"# device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", file=sys.stderr)
    print("kind,shape,ctx,batch,dtype,backend,ms,TFLOP/s,GB/s")
    ctxs = [512, 1024, 2048, 4096, 8192, 16384]
    for name, (h, kvh, hd) in SHAPES.items():
        g = h // kvh
        for ctx in ctxs if "prefill" in kinds else []:  # prefill, batch 1, causal
            q = torch.randn(1, h, ctx, hd, device=dev, dtype=dt)
            k = torch.randn(1, kvh, ctx, hd, device=dev, dtype=dt).repeat_interleave(g, dim=1)
            v = torch.randn(1, kvh, ctx, hd, device=dev, dtype=dt).repeat_interleave(g, dim=1)
            ctx_mgr, backend = sdpa_context()
            with ctx_mgr:
                ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.reps)
            flops = 4.0 * hd * h * 0.5 * ctx * (ctx + 1)
            print(f"prefill,{name},{ctx},1,{args.dtype},{backend},{ms:.4f},{flops / ms / 1e9:.2f},")
            del q, k, v
        for batch in (1, 16) if "decode" in kinds else ():
            for ctx in (1024, 4096, 8192, 16384):
                if name == "llama2-7b" and batch == 16 and ctx > 8192:
                    continue
                q = torch.randn(batch, h, 1, hd, device=dev, dtype=dt)
                k = torch.randn(batch, kvh, ctx, hd, device=dev, dtype=dt).repeat_interleave(g, dim=1)
                v = torch.randn(batch, kvh, ctx, hd, device=dev, dtype=dt).repeat_interleave(g, dim=1)
                ctx_mgr, backend = sdpa_context()
                with ctx_mgr:
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), args.reps)
                kv_bytes = 2.0 * batch * ctx * kvh * hd * 2
                print(f"decode,{name},{ctx},{batch},{args.dtype},{backend},{ms:.4f},,{kv_bytes / ms / 1e6:.1f}")
                del q, k, v
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
