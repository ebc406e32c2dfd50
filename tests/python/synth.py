"""Synthetic ablate run folders for the Python tests: summary.csv, requests.csv, steps.csv,
provenance.yaml and config.yaml laid out as ablate writes them (point, repeat, provenance columns,
config keys by dotted name with "config." on a clash, then the metrics), without the C++ binary."""
import csv
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLOTS = os.path.join(ROOT, "plots")
sys.path.insert(0, PLOTS)

PROVENANCE = {"git_commit": "1111111111111111111111111111111111111111", "git_dirty": "false",
              "build_commit": "1111111111111111111111111111111111111111", "ablate_version": "0.1.0",
              "compiler": "GNU 12.2.0", "build_type": "Release", "backend": "cpu", "device": "AMD EPYC",
              "threads": "2", "hostname": "vm", "start_time": "2026-01-01T00:00:00Z"}
CONFIG = {"experiment": "synthetic", "seed": 0, "threads": 2, "backend": "cpu", "batching": "continuous",
          "attention": "naive", "dtype": "fp32", "max_seq_len": 512, "repeat": 5, "warmup": 0,
          "model.source": "synthetic", "model.preset": "smollm2-135m", "kv.layout": "paged", "kv.block_size": 16,
          "workload.requests": 8, "workload.rate": 1}
METRICS = ["completed", "duration_s", "output_throughput", "ttft_median_ms", "ttft_p99_ms", "tpot_median_ms",
           "kv_waste", "acceptance_rate"]
CLASH = {"threads", "backend", "repeat"}  # provenance/meta names: written as config.<key>


def write_run(folder, points, provenance=None, status=None, extra_columns=None, requests=None):
    """points: list of (config overrides, [metric dict per repeat]). requests: optional
    {(point, repeat): [ttft_ms values]}. extra_columns: {name: value} added after `repeat`
    (e.g. run_index, round: the columns another change adds)."""
    os.makedirs(folder, exist_ok=True)
    prov = dict(PROVENANCE, **(provenance or {}))
    extra = extra_columns or {}
    keys = list(CONFIG)
    header = ["point", "repeat", *extra, *prov, *[("config." + k if k in CLASH else k) for k in keys], *METRICS]
    with open(os.path.join(folder, "summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for p, (over, reps) in enumerate(points):
            cfg = dict(CONFIG, **over)
            for r, m in enumerate(reps):
                w.writerow([p, r, *extra.values(), *prov.values(), *[cfg[k] for k in keys],
                            *[m.get(k, "") for k in METRICS]])
    with open(os.path.join(folder, "provenance.yaml"), "w") as f:
        f.write(f'run_id: "{os.path.basename(folder)}"\nexperiment: "synthetic"\nconfig_hash: "0"\n')
        for k, v in prov.items():
            f.write(f'{k}: "{v}"\n')
        if status:
            f.write(f'status: "{status}"\n')
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        for p, (over, _) in enumerate(points):
            cfg = dict(CONFIG, **over)
            f.write(f"# point {p}\n---\n")
            written = set()
            for k in keys:  # nested block maps, two-space indent, as ablate writes them
                parts = k.split(".")
                for d in range(len(parts) - 1):
                    prefix = ".".join(parts[:d + 1])
                    if prefix not in written:
                        f.write("  " * d + parts[d] + ":\n")
                        written.add(prefix)
                f.write("  " * (len(parts) - 1) + f"{parts[-1]}: {cfg[k]}\n")
    with open(os.path.join(folder, "requests.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["point", "repeat", "request_id", "arrival_s", "queue_time_ms", "ttft_ms", "tpot_ms", "e2el_ms",
                    "itl_mean_ms", "prompt_len", "output_len", "preemptions"])
        for (p, r), vals in sorted((requests or {}).items()):
            for i, v in enumerate(vals):
                w.writerow([p, r, i, 0, 0, v, 20 + i % 3, v + 100, 20, 32, 8, 0])
    with open(os.path.join(folder, "steps.csv"), "w") as f:
        f.write("point,repeat,step,start_s,wall_s,forward_s,batch_size\n")
    return folder
