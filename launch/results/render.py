"""Renders the results page of one data set, and its EfQAT plots, from the runs
that launch/results.sh made:

    render.py RUNS RANKS DOCS [SUFFIX] > DOCS/resultsSUFFIX.md

RUNS    the runs' folder, e.g. runs/results or runs/results/fashion-mnist. Its
        settings.json (written by results.sh) names the data set, the FP32
        options every run got and the QAT epochs; a folder without one holds
        MNIST 5k runs with efqat-train's defaults.
RANKS   the ranks of the default job and of the other architectures' FP32 runs.
DOCS    the page's folder: when there are EfQAT runs, the plots go there as
        efqat-accuracySUFFIX.svg (accuracy against the trained fraction p) and
        efqat-backwardSUFFIX.svg (accuracy against the backward time per step).
SUFFIX  ends the plots' names, e.g. -fashion-mnist (default: nothing).

The page goes to standard output and links the plots by name, so it belongs
in DOCS. Every section shows what it finds: a missing run is a "-"."""
import functools
import json
import math
import pathlib
import platform
import re
import statistics
import subprocess
import sys

if len(sys.argv) not in (4, 5):
    sys.exit(__doc__)
out = pathlib.Path(sys.argv[1])
ranks = sys.argv[2]
docs = pathlib.Path(sys.argv[3])
suffix = sys.argv[4] if len(sys.argv) == 5 else ""
accuracy_svg = docs / f"efqat-accuracy{suffix}.svg"
backward_svg = docs / f"efqat-backward{suffix}.svg"


@functools.cache
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


def epochs(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def data_sizes(log):
    """The training and test images that the first line of a run's log names
    ("efqat-train: resnet20 on mnist5k (4500 train, 500 test), 8 rank(s), ..."),
    or None (a synthesis run's log names none)."""
    with log.open() as f:
        found = re.search(r" on \S+ \((\d+) train, (\d+) test\)", f.readline())
    return (int(found[1]), int(found[2])) if found else None


# The setup: from settings.json, and the data set's size from the default
# job's log (or, without it, any run's).
settings_file = out / "settings.json"
settings = (json.loads(settings_file.read_text()) if settings_file.exists()
            else {"dataset": "mnist5k", "fp32_args": [], "qat_epochs": 3})
dataset = settings["dataset"]
dataset_name = {"mnist5k": "the MNIST 5k subset", "fashion-mnist": "Fashion-MNIST"}.get(dataset, dataset)
qat_epochs = settings["qat_epochs"]
logs = sorted(out.glob("*.log"), key=lambda log: (log.name != "default.log", log.name))
sizes = next(filter(None, map(data_sizes, logs)), None)
# What one test image weighs, for reading small differences.
test_set = f"{sizes[1]} images: one image is {100 / sizes[1]:g} points" if sizes else None

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()

dataset_option = "" if dataset == "mnist5k" else f" --dataset {dataset}"
print("# Results\n" if dataset == "mnist5k" else f"# Results on {dataset_name}\n")
print(f"Measured by `launch/results.sh{dataset_option}` at commit `{commit}` on {cores} cores ({cpu}). "
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
    command = " ".join(["efqat-train"] + settings["fp32_args"])
    print("## Default job\n")
    print(f"`mpirun -n {ranks} {command}`" + ("" if settings["fp32_args"] else " with no options")
          + f": ResNet-20 on {dataset_name}" + (f" ({sizes[0]} train / {sizes[1]} test)" if sizes else "")
          + ", FP32 training, W8A8 calibration, then EfQAT (CWPN, p = 0.1)."
          + (" Every run on this page gets the same FP32 options." if settings["fp32_args"] else "") + "\n")
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
          "Reconstruction: `--reconstruct` defaults, and once with `--no-qdrop`, which quantizes every element "
          "in training. Time is the whole single-process run (load, calibrate, reconstruct, evaluate).\n")
    print(f"FP32: {pct(fp32)}.\n")
    methods = [("minmax-stale-bn", "min-max, FP32 batch-norm statistics"), ("minmax", "min-max"),
               ("lp", "L_p search (p = 2.4)"), ("reconstruction", "min-max + reconstruction (Genie-M, QDrop)"),
               ("reconstruction-no-qdrop", "min-max + reconstruction without QDrop"),
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

# EfQAT against full QAT. Runs efqat-{bits}-{key}, key full, p0 or
# {mode}-p{p}, all from the same PTQ init.
modes = ["cwpn", "cwpl", "lwpn"]
fractions = ["0.05", "0.1", "0.25"]
efqat_bits = [b for b in ["W4A4", "W3A3"] if exists(f"efqat-{b}-full")]


def efqat_stage(b, key):
    """The trained stage of an EfQAT section run, or None if it is missing."""
    run = f"efqat-{b}-{key}"
    return trained(summary(run)) if exists(run) else None


def efqat_ptq(b):
    """The accuracy of the PTQ init that every EfQAT run at these bits starts from."""
    return summary(f"efqat-{b}-full")["PTQ"]["accuracy"]


if efqat_bits:
    print("## EfQAT: accuracy against the trained fraction\n")
    print(f"QAT from the default PTQ init (min-max calibration, batch-norm re-estimation) of the default job's FP32 "
          f"model, {epochs(qat_epochs)}" + (" (the default)" if qat_epochs == 3 else "") + " at lr 0.01, 2 ranks. "
          "EfQAT trains the fraction p of the conv/linear weights "
          "chosen by the mode (CWPN: channels ranked over the network by mean |w|; CWPL: the top channels of every layer; "
          "LWPN: whole layers), plus all activation steps, biases and batch-norm parameters; p = 1 is full QAT. "
          "Each cell: test accuracy (QAT time in s, trained weights, all-reduced per step)."
          + (f" The test set has {test_set}." if test_set else "") + "\n")

    def efqat_cell(s):
        if s is None:
            return "-"
        return (f"{pct(s['accuracy'])} ({s['seconds']:.0f} s, {100 * s['trained_weight_fraction']:.1f}%, "
                f"{s['bytes_per_step'] / 1024:.0f} KiB)")
    for b in efqat_bits:
        ptq_acc, full, p0 = efqat_ptq(b), efqat_stage(b, "full"), efqat_stage(b, "p0")
        print(f"### {b}\n")
        print(f"PTQ (no training): {pct(ptq_acc)}. Full QAT: {efqat_cell(full)}. "
              f"p = 0 (no weights, only the always-trained tensors): {efqat_cell(p0)}.\n")
        print("| mode | " + " | ".join(f"p = {p}" for p in fractions) + " | gap recovered at p = 0.1 |")
        print("|---|" + "---|" * (len(fractions) + 1))
        gap = full["accuracy"] - ptq_acc
        for mode in modes:
            stages = [efqat_stage(b, f"{mode}-p{p}") for p in fractions]
            at = efqat_stage(b, f"{mode}-p0.1")
            if at is None:
                recovered = "-"
            elif abs(gap) < 1e-9:
                recovered = "- (no gap)"
            else:
                recovered = f"{100 * (at['accuracy'] - ptq_acc) / gap:.0f}%"
            print(f"| {mode.upper()} | " + " | ".join(map(efqat_cell, stages)) + f" | {recovered} |")
        print(f"\nGap recovered = (EfQAT at p = 0.1 - PTQ) / (full QAT - PTQ); full QAT closes "
              f"{100 * (full['accuracy'] - ptq_acc):+.2f} points here.\n")
    print(f"![EfQAT accuracy against p]({accuracy_svg.name})\n")
    print("The same runs against the backward time per QAT step (rank 0's backward passes, averaged over the "
          "steps): what training only the fraction p saves, and at what accuracy.\n")
    print(f"![EfQAT accuracy against the backward time per step]({backward_svg.name})\n")


# The plots: hand-written SVG, one panel per bit width side by side.
WIDTH, HEIGHT, PAD = 360, 280, 64  # a panel, and its margin left of and below the axes
COLORS = {"cwpn": "#1f77b4", "cwpl": "#ff7f0e", "lwpn": "#2ca02c"}


class Panel:
    """The i-th panel from the left: maps a point (x, accuracy) to pixels and
    draws the frame. x_unit maps x to 0..1 along the x axis."""

    def __init__(self, i, accuracies, x_unit):
        self.x0, self.x_unit = i * WIDTH, x_unit
        self.lo, self.hi = min(accuracies) - 0.002, max(accuracies) + 0.002

    def px(self, x):
        return self.x0 + PAD + (WIDTH - PAD - 16) * self.x_unit(x)

    def py(self, a):
        return HEIGHT - PAD - (a - self.lo) / (self.hi - self.lo) * (HEIGHT - PAD - 24)

    def frame(self, title, x_ticks, x_label, ptq):
        """The title, both axes with their ticks (x at x_ticks, which start
        at the y axis; accuracy in %) and PTQ's accuracy as a dashed line."""
        left, right, bottom = self.px(x_ticks[0]), self.px(x_ticks[-1]), self.py(self.lo)
        parts = [f'<text x="{self.x0 + WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">{title}</text>',
                 f'<line x1="{left:.1f}" y1="{bottom:.1f}" x2="{right:.1f}" y2="{bottom:.1f}" stroke="black"/>',
                 f'<line x1="{left:.1f}" y1="{bottom:.1f}" x2="{left:.1f}" y2="{self.py(self.hi):.1f}" stroke="black"/>']
        for x in x_ticks:
            parts.append(f'<text x="{self.px(x):.1f}" y="{bottom + 14:.1f}" text-anchor="middle">{x:g}</text>')
        parts.append(f'<text x="{(left + right) / 2:.1f}" y="{HEIGHT - 26}" text-anchor="middle">{x_label}</text>')
        for k in range(5):
            a = self.lo + (self.hi - self.lo) * k / 4
            parts.append(f'<text x="{left - 4:.1f}" y="{self.py(a) + 4:.1f}" text-anchor="end">{100 * a:.1f}</text>')
        parts.append(f'<line x1="{left:.1f}" y1="{self.py(ptq):.1f}" x2="{right:.1f}" y2="{self.py(ptq):.1f}" '
                     'stroke="gray" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{right:.1f}" y="{self.py(ptq) - 3:.1f}" text-anchor="end" fill="gray">PTQ</text>')
        return parts

    def legend(self, marker):
        """The modes' colours below the x axis, each behind marker."""
        return [f'<text x="{self.px(0) + 70 * j:.1f}" y="{HEIGHT - 8}" fill="{COLORS[m]}">{marker} {m.upper()}</text>'
                for j, m in enumerate(modes)]


def write_svg(path, parts):
    path.write_text("\n".join(
        [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH * len(efqat_bits)}" height="{HEIGHT}" '
         'font-family="sans-serif" font-size="11">'] + parts + ["</svg>"]) + "\n")


def dot(panel, x, a, color):
    return f'<circle cx="{panel.px(x):.1f}" cy="{panel.py(a):.1f}" r="2.5" fill="{color}"/>'


def render_accuracy_svg():
    """Test accuracy against p for each mode, from p = 0 to full QAT at
    p = 1, with PTQ as a dashed line. p runs on a square-root scale so 0.05
    and 0.1 stay apart from 0."""
    parts = []
    for i, b in enumerate(efqat_bits):
        ends = [(p, efqat_stage(b, key)) for p, key in [(0.0, "p0"), (1.0, "full")]]
        ends = [(p, s["accuracy"]) for p, s in ends if s]
        curves = {}
        for m in modes:
            stages = [(float(p), efqat_stage(b, f"{m}-p{p}")) for p in fractions]
            curves[m] = sorted(ends + [(p, s["accuracy"]) for p, s in stages if s])
        panel = Panel(i, [a for points in curves.values() for _, a in points] + [efqat_ptq(b)], lambda p: p ** 0.5)
        parts += panel.frame(b, [0, 0.05, 0.1, 0.25, 0.5, 1], "p (trained fraction of weights)", efqat_ptq(b))
        for m, points in curves.items():
            path = " ".join(f"{panel.px(p):.1f},{panel.py(a):.1f}" for p, a in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{COLORS[m]}" stroke-width="1.5"/>')
            parts += [dot(panel, p, a, COLORS[m]) for p, a in points]
        parts += panel.legend("&#8212;")
    write_svg(accuracy_svg, parts)


def axis_ticks(top):
    """Ticks from 0 past top, about five, spaced 1, 2 or 5 times a power of ten."""
    rough = top / 5 if top > 0 else 1
    power = 10 ** math.floor(math.log10(rough))
    step = next(k * power for k in (1, 2, 5, 10) if k * power >= rough)
    return [k * step for k in range(max(1, math.ceil(top / step)) + 1)]


def render_backward_svg():
    """Test accuracy against the backward time per step (the trained stage's
    backward_s_per_step, in ms) of every EfQAT run: the modes in colour with
    p beside each point, p = 0 and full QAT in black, PTQ as a dashed line."""
    parts = []
    for i, b in enumerate(efqat_bits):
        runs = [("p0", "black", "p = 0"), ("full", "black", "full QAT")]
        runs += [(f"{m}-p{p}", COLORS[m], p) for m in modes for p in fractions]
        points = []  # (ms, accuracy, colour, label)
        for key, color, label in runs:
            s = efqat_stage(b, key)
            if s and "backward_s_per_step" in s:
                points.append((1000 * s["backward_s_per_step"], s["accuracy"], color, label))
        ticks = axis_ticks(max((ms for ms, _, _, _ in points), default=0))
        panel = Panel(i, [a for _, a, _, _ in points] + [efqat_ptq(b)], lambda ms, top=ticks[-1]: ms / top)
        parts += panel.frame(b, ticks, "backward time per step (ms)", efqat_ptq(b))
        for ms, a, color, label in points:
            parts.append(dot(panel, ms, a, color))
            # Labels right of the point, but left of it near the panel's
            # right edge, so that they stay in the panel.
            x, anchor = panel.px(ms), "start"
            if panel.x_unit(ms) > 0.75:
                x, anchor = x - 8, "end"
            parts.append(f'<text x="{x + 4:.1f}" y="{panel.py(a) - 4:.1f}" text-anchor="{anchor}" font-size="9" '
                         f'fill="{color}">{label}</text>')
        parts += panel.legend("&#9679;")
    write_svg(backward_svg, parts)


if efqat_bits:
    render_accuracy_svg()
    render_backward_svg()

# Seeds: the cells that decide defaults, each run seed{S}-{name} with several
# seeds from one FP32 model, named as the cell's run in the ptq or efqat section.
seed_runs = {}  # name -> the finished runs, one per seed
for path in sorted(out.glob("seed*.seconds")):
    found = re.fullmatch(r"seed(\d+)-(.+)\.seconds", path.name)
    run = path.name.removesuffix(".seconds")
    if found and exists(run):
        seed_runs.setdefault(found[2], {})[int(found[1])] = run


def seed_accuracies(name, stage):
    """The accuracy of stage (PTQ, or QAT: the trained stage) in each seed's run of a cell."""
    return [(trained(summary(r)) if stage == "QAT" else summary(r)[stage])["accuracy"]
            for r in seed_runs.get(name, {}).values()]


def mean(values):
    return statistics.mean(values) if values else None


def spread(values):
    """Table cells of one cell's accuracies over the seeds: n, mean ± sample
    standard deviation (in points), min and max; "-" without runs."""
    if not values:
        return ["-"] * 4
    deviation = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return [str(len(values)), pct(statistics.mean(values)) + deviation, pct(min(values)), pct(max(values))]


if seed_runs:
    # Pairs of PTQ variants: does the second lose against the first?
    pairs = [("W2A4 reconstruction", ("ptq-W2A4-reconstruction", "with QDrop"),
              ("ptq-W2A4-reconstruction-no-qdrop", "without QDrop")),
             ("W3A3 min-max", ("ptq-W3A3-minmax", "batch-norm re-estimation"),
              ("ptq-W3A3-minmax-stale-bn", "FP32 batch-norm statistics"))]
    seeds = sorted({s for runs in seed_runs.values() for s in runs})
    print("## Seeds\n")
    print(f"How far single runs can be trusted: the cells that decide defaults, run with seeds "
          f"{', '.join(map(str, seeds))} from the default job's FP32 model, given by `--model` so that it is not "
          "retrained: a run's seed changes its calibration subsets, data order and QDrop masks only. "
          "PTQ cells as in the PTQ section (one process); EfQAT cells as in the EfQAT section "
          f"({epochs(qat_epochs)}, 2 ranks) from each seed's own min-max PTQ init. Each cell: the number of seeds n, "
          "mean ± sample standard deviation (in points), min and max."
          + (f" The test set has {test_set}." if test_set else "") + "\n")
    print("| PTQ | n | mean ± sd | min | max |")
    print("|---|---|---|---|---|")
    for cell, *variants in pairs:
        for name, label in variants:
            print(f"| {cell}, {label} | " + " | ".join(spread(seed_accuracies(name, "PTQ"))) + " |")
    print("\nDifferences of the means:\n")
    for cell, (first, first_label), (second, second_label) in pairs:
        means = [mean(seed_accuracies(name, "PTQ")) for name in (first, second)]
        difference = f"{100 * (means[0] - means[1]):+.2f} points" if None not in means else "-"
        print(f"- {cell}, {first_label} minus {second_label}: {difference}")
    print()
    print("| EfQAT p = 0.1 | n | PTQ init: mean ± sd | EfQAT: mean ± sd | EfQAT min | EfQAT max |")
    print("|---|---|---|---|---|---|")
    for b in ["W4A4", "W3A3"]:
        for m in modes:
            name = f"efqat-{b}-{m}-p0.1"
            n, ptq_mean, _, _ = spread(seed_accuracies(name, "PTQ"))
            _, efqat_mean, low, high = spread(seed_accuracies(name, "QAT"))
            print(f"| {b} {m.upper()} | {n} | {ptq_mean} | {efqat_mean} | {low} | {high} |")
    print()

# Zero-shot quantization: the same stages on images without labels.
zs_bits = [b for b in ["W4A4", "W3A3"] if exists(f"zs-{b}-genie-efqat")]
if zs_bits:
    def genie_record(folder, event):
        path = out / folder / "genie.jsonl"
        records = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
        return next((r for r in reversed(records) if r["event"] == event), None)

    sources = [("genie", "Genie-D images"), ("noise", "Gaussian noise N(0, 1)"), ("real", "real training images")]
    zs_settings = json.loads((out / "zs.json").read_text())
    images = zs_settings["images"]
    synthesis = genie_record("zs-genie", "genie_summary")
    print("## Zero-shot quantization\n")
    print(f"`--zero-shot`: every stage after the FP32 model (the default job's, trained with labels) sees images only, "
          f"never a label: calibration, batch-norm re-estimation, reconstruction and EfQAT, which learns by distillation "
          f"from the FP32 model (KL of the softmax outputs, T = 1). Three sets of {images} images: Genie-D images "
          f"synthesised from the FP32 model's batch-norm statistics ({zs_settings['iterations']} iterations per batch of 64"
          + (f", {synthesis['seconds']:.0f} s on {synthesis['world_size']} ranks" if synthesis else "") + ")"
          + ", Gaussian noise in the normalised input space, and real training images (labels unused). "
          f"Reconstruction: {zs_settings['reconstruction_iterations']} iterations per block. "
          "Every stage uses the whole set (`--calibration-samples` and `--reconstruction-samples` "
          f"{images}). EfQAT: CWPN p = 0.1 from the min-max PTQ model, {epochs(zs_settings['qat_epochs'])} of the set "
          "(global batch 128, lr 0.01), 2 ranks. Evaluation on the real test set"
          + (f" ({test_set})" if test_set else "") + ".\n")
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
        print(f"`efqat-train synthesize` of 128 images in 4 batches of 32, {zs_settings['time_iterations']} iterations "
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
          f"its FP32 model by the default job's FP32 recipe on {ranks} ranks (`--qat-epochs 0`), then every row starts from "
          "that model: W4A4 PTQ without training (single process; min-max with batch-norm re-estimation, L_p, "
          f"`--reconstruct` defaults, MixQuant's budget rule at 4 bits with reconstruction) and {epochs(qat_epochs)} "
          "of QAT on 2 ranks, EfQAT CWPN p = 0.1 and full QAT. First layer W8 with a float input, last W8A8. "
          "Times are whole runs.\n")
    rows = [("ptq-minmax", "PTQ min-max"), ("ptq-lp", "PTQ L_p"), ("ptq-reconstruction", "PTQ reconstruction"),
            ("ptq-mixquant-reconstruction", "PTQ MixQuant + reconstruction"), ("efqat-p0.1", "EfQAT p = 0.1"),
            ("efqat-full", "full QAT")]
    present = [(a, label) for a, label in architectures if exists(f"arch-{a}-fp32")]
    print("| W4A4 | " + " | ".join(label for _, label in present) + " |")
    print("|---|" + "---|" * len(present))

    def arch_cell(run, stage):
        if not exists(run):
            return "-"
        stages = summary(run)
        s = trained(stages) if stage == "QAT" else stages[stage]
        return f"{pct(s['accuracy'])} ({float((out / f'{run}.seconds').read_text()):.0f} s)"

    print("| FP32 | " + " | ".join(arch_cell(f"arch-{a}-fp32", "FP32") for a, _ in present) + " |")
    for key, label in rows:
        stage = "QAT" if key.startswith("efqat") else "PTQ"
        print(f"| {label} | " + " | ".join(arch_cell(f"arch-{a}-{key}", stage) for a, _ in present) + " |")
    print()
