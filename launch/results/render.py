"""Renders docs/results.md from the runs that launch/results.sh made."""
import json
import pathlib
import platform
import subprocess
import sys

out = pathlib.Path(sys.argv[1])
ranks = sys.argv[2]


def summary(run):
    """The last summary record of a run's metrics."""
    lines = (out / run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if '"summary"' in line]
    return {s["stage"].split(" ")[0]: s for s in records[-1]["stages"]}


def pct(x):
    return f"{100 * x:.2f}%"


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()

default = summary("default")
seconds = float((out / "default.seconds").read_text())
print("# Results\n")
print(f"Measured by `launch/results.sh` at commit `{commit}` on {cores} cores ({cpu}). "
      "Rerun it to reproduce every figure here; it rewrites this file.\n")
print("## Default job\n")
print(f"`mpirun -n {ranks} efqat-train` with no options: ResNet-20 on the MNIST 5k subset "
      "(4500 train / 500 test), FP32 training then W8A8 calibration and QAT.\n")
print("| stage | test accuracy | time (s) | samples/s | all-reduced |")
print("|---|---|---|---|---|")
for name, s in default.items():
    rate = f"{s['samples_per_s']:.0f}" if s["samples_per_s"] else "-"
    mib = f"{s['bytes_reduced'] / 2**20:.1f} MiB" if s["bytes_reduced"] else "-"
    print(f"| {s['stage']} | {pct(s['accuracy'])} | {s['seconds']:.1f} | {rate} | {mib} |")
print(f"\nWall time of the whole job, launch to exit: **{seconds:.0f} s**. "
      f"QAT minus FP32: {100 * (default['QAT']['accuracy'] - default['FP32']['accuracy']):+.2f} points.\n")

print("## PTQ without training\n")
print("The FP32 model of the default job, quantized and evaluated with no training. "
      "Weights per channel (symmetric), activations per tensor; first layer W8 with a float input, "
      "last layer W8A8 (the reference recipe). MixQuant uses the budget rule at the target's mean bits, "
      "so the model has the size of the uniform one. The rows without reconstruction re-estimate the batch-norm "
      "running statistics on the quantized model (512 calibration images, the default) except the first, which "
      "keeps the FP32 statistics; reconstruction keeps them too and corrects the blocks' outputs instead. Reconstruction: 256 calibration images, 400 iterations "
      "per block, batch 32 (`--reconstruct` defaults). Time is the whole single-process run "
      "(load, calibrate, reconstruct, evaluate).\n")
fp32 = default["FP32"]["accuracy"]
print(f"FP32: {pct(fp32)}.\n")
methods = [("minmax-stale-bn", "min-max, FP32 batch-norm statistics"), ("minmax", "min-max"), ("lp", "L_p search (p = 2.4)"),
           ("reconstruction", "min-max + reconstruction (Genie-M, QDrop)"),
           ("mixquant-minmax", "MixQuant + min-max"), ("mixquant-lp", "MixQuant + L_p"),
           ("mixquant-reconstruction", "MixQuant + reconstruction")]
bits = ["W8A8", "W4A4", "W3A3", "W2A4"]
print("| method | " + " | ".join(bits) + " |")
print("|---|" + "---|" * len(bits))
for key, label in methods:
    cells = []
    for b in bits:
        run = f"ptq-{b}-{key}"
        if not (out / run / "metrics.jsonl").exists():
            cells.append("-")
            continue
        acc = summary(run)["PTQ"]["accuracy"]
        secs = int((out / f"{run}.seconds").read_text())
        cells.append(f"{pct(acc)} ({100 * (acc - fp32):+.1f}, {secs} s)")
    print(f"| {label} | " + " | ".join(cells) + " |")
print("\nEach cell: test accuracy (points against FP32, run time).")
