"""Renders docs/results.md (and the EfQAT accuracy plot) from the runs that
launch/results.sh made: render.py RUNS RANKS SVG > docs/results.md."""
import json
import pathlib
import platform
import subprocess
import sys

out = pathlib.Path(sys.argv[1])
ranks = sys.argv[2]
svg_path = pathlib.Path(sys.argv[3])


def summary(run):
    """The stages of a run's last summary record, keyed by their first word
    (FP32, PTQ, EfQAT or QAT)."""
    lines = (out / run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if '"summary"' in line]
    return {s["stage"].split(" ")[0]: s for s in records[-1]["stages"]}


def trained(stages):
    """The QAT stage of a run: EfQAT, or full QAT."""
    return stages.get("EfQAT") or stages["QAT"]


def exists(run):
    """A finished run: results.sh writes RUN.seconds when it ends."""
    return (out / f"{run}.seconds").exists() and (out / run / "metrics.jsonl").exists()


def pct(x):
    return f"{100 * x:.2f}%"


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()

print("# Results\n")
print(f"Measured by `launch/results.sh` at commit `{commit}` on {cores} cores ({cpu}). "
      "Rerun it to reproduce every figure here; it rewrites this file.\n")

# The default job: its own section, and the FP32 accuracy every other
# section compares with (from another run's FP32 stage when the default
# job's record is missing, as in a run of one section on a copied model).
if exists("default"):
    default = summary("default")
    fp32 = default["FP32"]["accuracy"]
else:
    default = None
    fp32 = next((summary(r.name)["FP32"]["accuracy"] for r in sorted(out.iterdir()) if exists(r.name)), float("nan"))
if default:
    seconds = float((out / "default.seconds").read_text())
    print("## Default job\n")
    print(f"`mpirun -n {ranks} efqat-train` with no options: ResNet-20 on the MNIST 5k subset "
          "(4500 train / 500 test), FP32 training, W8A8 calibration, then EfQAT (CWPN, p = 0.1).\n")
    print("| stage | test accuracy | time (s) | samples/s | trained weights | backward/step | all-reduced/step |")
    print("|---|---|---|---|---|---|---|")
    for name, s in default.items():
        if "samples_per_s" in s:
            cells = [f"{s['samples_per_s']:.0f}", f"{100 * s['trained_weight_fraction']:.1f}%",
                     f"{1000 * s['backward_s_per_step']:.0f} ms", f"{s['bytes_per_step'] / 1024:.1f} KiB"]
        else:
            cells = ["-"] * 4
        print(f"| {s['stage']} | {pct(s['accuracy'])} | {s['seconds']:.1f} | " + " | ".join(cells) + " |")
    print(f"\nWall time of the whole job, launch to exit: **{seconds:.0f} s**. "
          f"EfQAT minus FP32: {100 * (trained(default)['accuracy'] - fp32):+.2f} points.\n")

bits = ["W8A8", "W4A4", "W3A3", "W2A4"]
if any(exists(f"ptq-{b}-minmax") for b in bits):
    print("## PTQ without training\n")
    print("The FP32 model of the default job, quantized and evaluated with no training. "
          "Weights per channel (symmetric), activations per tensor; first layer W8 with a float input, "
          "last layer W8A8 (the reference recipe). MixQuant uses the budget rule at the target's mean bits, "
          "so the model has the size of the uniform one. The rows without reconstruction re-estimate the batch-norm "
          "running statistics on the quantized model (512 calibration images, the default) except the first, which "
          "keeps the FP32 statistics; reconstruction keeps them too and corrects the blocks' outputs instead. "
          "Reconstruction: `--reconstruct` defaults. Time is the whole single-process run "
          "(load, calibrate, reconstruct, evaluate).\n")
    print(f"FP32: {pct(fp32)}.\n")
    methods = [("minmax-stale-bn", "min-max, FP32 batch-norm statistics"), ("minmax", "min-max"),
               ("lp", "L_p search (p = 2.4)"), ("reconstruction", "min-max + reconstruction (Genie-M, QDrop)"),
               ("mixquant-minmax", "MixQuant + min-max"), ("mixquant-lp", "MixQuant + L_p"),
               ("mixquant-reconstruction", "MixQuant + reconstruction")]
    print("| method | " + " | ".join(bits) + " |")
    print("|---|" + "---|" * len(bits))
    for key, label in methods:
        cells = []
        for b in bits:
            run = f"ptq-{b}-{key}"
            if not exists(run):
                cells.append("-")
                continue
            acc = summary(run)["PTQ"]["accuracy"]
            secs = int((out / f"{run}.seconds").read_text())
            cells.append(f"{pct(acc)} ({100 * (acc - fp32):+.1f}, {secs} s)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nEach cell: test accuracy (points against FP32, run time).\n")

# EfQAT against full QAT.
modes = ["cwpn", "cwpl", "lwpn"]
fractions = ["0.05", "0.1", "0.25"]
efqat_bits = [b for b in ["W4A4", "W3A3"] if exists(f"efqat-{b}-full")]
curves = {}
if efqat_bits:
    print("## EfQAT: accuracy against the trained fraction\n")
    print("QAT from the default PTQ init (min-max calibration, batch-norm re-estimation) of the default job's FP32 "
          "model, 3 epochs (the default) at lr 0.01, 2 ranks. EfQAT trains the fraction p of the conv/linear weights "
          "chosen by the mode (CWPN: channels ranked over the network by mean |w|; CWPL: the top channels of every layer; "
          "LWPN: whole layers), plus all activation steps, biases and batch-norm parameters; p = 1 is full QAT. "
          "Each cell: test accuracy (QAT time in s, trained weights, all-reduced per step). The test set has "
          "500 images: one image is 0.2 points.\n")
    for b in efqat_bits:
        ptq_acc = summary(f"efqat-{b}-p0")["PTQ"]["accuracy"]
        full = trained(summary(f"efqat-{b}-full"))
        p0 = trained(summary(f"efqat-{b}-p0"))

        def cell(s):
            return (f"{pct(s['accuracy'])} ({s['seconds']:.0f} s, {100 * s['trained_weight_fraction']:.1f}%, "
                    f"{s['bytes_per_step'] / 1024:.0f} KiB)")
        print(f"### {b}\n")
        print(f"PTQ (no training): {pct(ptq_acc)}. Full QAT: {cell(full)}. "
              f"p = 0 (no weights, only the always-trained tensors): {cell(p0)}.\n")
        print("| mode | " + " | ".join(f"p = {p}" for p in fractions) + " | gap recovered at p = 0.1 |")
        print("|---|" + "---|" * (len(fractions) + 1))
        for mode in modes:
            cells, points = [], [(0.0, p0["accuracy"])]
            for p in fractions:
                run = f"efqat-{b}-{mode}-p{p}"
                if not exists(run):
                    cells.append("-")
                    continue
                s = trained(summary(run))
                cells.append(cell(s))
                points.append((float(p), s["accuracy"]))
            points.append((1.0, full["accuracy"]))
            curves[(b, mode)] = points
            at = dict(points).get(0.1)
            gap = full["accuracy"] - ptq_acc
            recovered = f"{100 * (at - ptq_acc) / gap:.0f}%" if at is not None and abs(gap) > 1e-9 else "- (no gap)"
            print(f"| {mode.upper()} | " + " | ".join(cells) + f" | {recovered} |")
        print(f"\nGap recovered = (EfQAT at p = 0.1 - PTQ) / (full QAT - PTQ); full QAT closes "
              f"{100 * (full['accuracy'] - ptq_acc):+.2f} points here.\n")
        curves[(b, "ptq")] = ptq_acc
    print(f"![EfQAT accuracy against p]({svg_path.name})\n")


def render_svg():
    """One panel per bit width: test accuracy against p for each mode, with
    PTQ and full QAT as dashed lines. p runs on a square-root scale so 0.05
    and 0.1 stay apart from 0."""
    width, height, pad = 360, 280, 64
    colors = {"cwpn": "#1f77b4", "cwpl": "#ff7f0e", "lwpn": "#2ca02c"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(efqat_bits)}" height="{height}" '
             'font-family="sans-serif" font-size="11">']
    for i, b in enumerate(efqat_bits):
        x0 = i * width
        values = [a for m in modes for _, a in curves.get((b, m), [])] + [curves[(b, "ptq")]]
        lo, hi = min(values) - 0.002, max(values) + 0.002

        def px(p):
            return x0 + pad + (width - pad - 16) * p ** 0.5

        def py(a):
            return height - pad + (a - lo) / (hi - lo) * -(height - pad - 24)
        parts.append(f'<text x="{x0 + width / 2}" y="16" text-anchor="middle" font-weight="bold">{b}</text>')
        parts.append(f'<line x1="{px(0)}" y1="{py(lo)}" x2="{px(1)}" y2="{py(lo)}" stroke="black"/>')
        parts.append(f'<line x1="{px(0)}" y1="{py(lo)}" x2="{px(0)}" y2="{py(hi)}" stroke="black"/>')
        for p in [0, 0.05, 0.1, 0.25, 0.5, 1]:
            parts.append(f'<text x="{px(p)}" y="{py(lo) + 14}" text-anchor="middle">{p:g}</text>')
        parts.append(f'<text x="{px(0.5)}" y="{height - 26}" text-anchor="middle">p (trained fraction of weights)</text>')
        for k in range(5):
            a = lo + (hi - lo) * k / 4
            parts.append(f'<text x="{px(0) - 4}" y="{py(a) + 4}" text-anchor="end">{100 * a:.1f}</text>')
        ptq = curves[(b, "ptq")]
        parts.append(f'<line x1="{px(0)}" y1="{py(ptq)}" x2="{px(1)}" y2="{py(ptq)}" stroke="gray" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{px(1)}" y="{py(ptq) - 3}" text-anchor="end" fill="gray">PTQ</text>')
        for j, m in enumerate(modes):
            points = curves.get((b, m), [])
            path = " ".join(f"{px(p):.1f},{py(a):.1f}" for p, a in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colors[m]}" stroke-width="1.5"/>')
            for p, a in points:
                parts.append(f'<circle cx="{px(p):.1f}" cy="{py(a):.1f}" r="2.5" fill="{colors[m]}"/>')
            parts.append(f'<text x="{px(0) + 70 * j}" y="{height - 8}" fill="{colors[m]}">&#8212; {m.upper()}</text>')
    parts.append("</svg>")
    svg_path.write_text("\n".join(parts) + "\n")


if efqat_bits:
    render_svg()

# Zero-shot quantization: the same stages on images without labels.
zs_bits = [b for b in ["W4A4", "W3A3"] if exists(f"zs-{b}-genie-efqat")]
if zs_bits:
    def zs_summary(run):
        records = [json.loads(l) for l in (out / run / "metrics.jsonl").read_text().splitlines() if '"summary"' in l]
        return records[-1]

    def genie_record(folder, event):
        path = out / folder / "genie.jsonl"
        records = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
        return next((r for r in reversed(records) if r["event"] == event), None)

    sources = [("genie", "Genie-D images"), ("noise", "Gaussian noise N(0, 1)"), ("real", "real training images")]
    settings = json.loads((out / "zs.json").read_text())
    images = settings["images"]
    synthesis = genie_record("zs-genie", "genie_summary")
    print("## Zero-shot quantization\n")
    print(f"`--zero-shot`: every stage after the FP32 model (the default job's, trained with labels) sees images only, "
          f"never a label: calibration, batch-norm re-estimation, reconstruction and EfQAT, which learns by distillation "
          f"from the FP32 model (KL of the softmax outputs, T = 1). Three sets of {images} images: Genie-D images "
          f"synthesised from the FP32 model's batch-norm statistics ({settings['iterations']} iterations per batch of 64"
          + (f", {synthesis['seconds']:.0f} s on {synthesis['world_size']} ranks" if synthesis else "") + ")"
          + ", Gaussian noise in the normalised input space, and real training images (labels unused). "
          f"Reconstruction: {settings['reconstruction_iterations']} iterations per block. "
          "Every stage uses the whole set (`--calibration-samples` and `--reconstruction-samples` "
          f"{images}). EfQAT: CWPN p = 0.1 from the min-max PTQ model, {settings['qat_epochs']} epochs of the set "
          "(global batch 128, lr 0.01), 2 ranks. Evaluation on the real test set "
          "(500 images: one image is 0.2 points).\n")
    print(f"FP32: {pct(fp32)}. Each EfQAT cell: test accuracy (QAT time).\n")
    for b in zs_bits:
        print(f"### {b}\n")
        print("| images | PTQ min-max | PTQ reconstruction | EfQAT p = 0.1 (distillation) |")
        print("|---|---|---|---|")
        for key, label in sources:
            efqat_run, rec_run = f"zs-{b}-{key}-efqat", f"zs-{b}-{key}-reconstruction"
            cells = ["-"] * 3
            if exists(efqat_run):
                stages = summary(efqat_run)
                cells[0] = pct(stages["PTQ"]["accuracy"])
                cells[2] = f"{pct(trained(stages)['accuracy'])} ({trained(stages)['seconds']:.0f} s)"
            if exists(rec_run):
                cells[1] = pct(summary(rec_run)["PTQ"]["accuracy"])
            print(f"| {label} | " + " | ".join(cells) + " |")
        if exists(f"ptq-{b}-minmax"):
            rec = summary(f"ptq-{b}-reconstruction")["PTQ"]["accuracy"] if exists(f"ptq-{b}-reconstruction") else None
            print(f"| for comparison: the labelled training set (PTQ section: 512 calibration, 256 reconstruction images) | "
                  f"{pct(summary(f'ptq-{b}-minmax')['PTQ']['accuracy'])} | {pct(rec) if rec is not None else '-'} | - |")
        print()
    times = [(n, genie_record(f"zs-time-{n}", "genie_summary")) for n in (1, 2, 4)]
    times = [(n, r) for n, r in times if r]
    if times:
        print("### Synthesis time\n")
        print(f"`efqat-train synthesize` of 128 images in 4 batches of 32, {settings['time_iterations']} iterations "
              f"per batch, on 1, 2 and 4 ranks ({cores} cores; more ranks than cores share them):\n")
        print("| ranks | wall time | per image |")
        print("|---|---|---|")
        for n, r in times:
            print(f"| {n} | {r['seconds']:.0f} s | {r['seconds_per_image']:.3f} s |")
        print()

# The other architectures, each from its own FP32 model.
architectures = [("resnet18", "ResNet-18"), ("resnet50", "ResNet-50"), ("mobilenet_v2", "MobileNetV2")]
if any(exists(f"arch-{a}-fp32") for a, _ in architectures):
    print("## Other architectures\n")
    print("torchvision's ResNet-18, ResNet-50 and MobileNetV2 (`--arch`, full width) on the same data. Each trains "
          f"its FP32 model by the default recipe on {ranks} ranks (`--qat-epochs 0`), then every row starts from "
          "that model: W4A4 PTQ without training (single process; min-max with batch-norm re-estimation, L_p, "
          "`--reconstruct` defaults, MixQuant's budget rule at 4 bits with reconstruction) and 3 epochs of QAT "
          "on 2 ranks, EfQAT CWPN p = 0.1 and full QAT. First layer W8 with a float input, last W8A8. "
          "Times are whole runs.\n")
    rows = [("ptq-minmax", "PTQ min-max"), ("ptq-lp", "PTQ L_p"), ("ptq-reconstruction", "PTQ reconstruction"),
            ("ptq-mixquant-reconstruction", "PTQ MixQuant + reconstruction"), ("efqat-p0.1", "EfQAT p = 0.1"),
            ("efqat-full", "full QAT")]
    present = [(a, label) for a, label in architectures if exists(f"arch-{a}-fp32")]
    print("| W4A4 | " + " | ".join(label for _, label in present) + " |")
    print("|---|" + "---|" * len(present))

    def cell(run, stage):
        if not exists(run):
            return "-"
        stages = summary(run)
        s = trained(stages) if stage == "QAT" else stages[stage]
        return f"{pct(s['accuracy'])} ({float((out / f'{run}.seconds').read_text()):.0f} s)"

    print("| FP32 | " + " | ".join(cell(f"arch-{a}-fp32", "FP32") for a, _ in present) + " |")
    for key, label in rows:
        stage = "QAT" if key.startswith("efqat") else "PTQ"
        print(f"| {label} | " + " | ".join(cell(f"arch-{a}-{key}", stage) for a, _ in present) + " |")
    print()
