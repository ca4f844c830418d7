#!/usr/bin/env python3
"""An independent NumPy (float64) reference for the eval-mode forward of the
torchvision-style models efqat-train builds, driven only by a PyTorch
``state_dict`` saved as safetensors.

It is written from torchvision's documented module structure (and the
CIFAR ResNet of He et al. with 1x1-conv + BN projection shortcuts), not
from the Swift code, so that a test comparing the two checks that our
networks compute what ``model.load_state_dict(sd); model.eval(); model(x)``
would compute in PyTorch:

* CIFAR ResNet (resnet8/20/32/44/56/110...): conv1 3x3 s1 p1, bn1, relu,
  layer1..layer3 of BasicBlocks (stride 2 at the first block of layer2 and
  layer3, ``downsample`` = 1x1 conv with the block's stride + BN when the
  shape changes), global average pool, fc.
* torchvision resnet18/34/50/101/152: conv1 7x7 s2 p3, bn1, relu, maxpool
  3x3 s2 p1 (padding with -inf), layer1..layer4 (stride 2 at the first block
  of layer2..4) of BasicBlock or Bottleneck (v1.5: the stride is on the 3x3
  conv2), ``downsample`` = conv1x1(stride) + BN, avgpool, fc.
* torchvision mobilenet_v2: features.0 = Conv3x3 s2 + BN + ReLU6,
  features.1..17 = InvertedResidual (``conv.*``: optional 1x1 expansion +
  BN + ReLU6, depthwise 3x3 (groups = channels) + BN + ReLU6, 1x1 projection,
  BN; residual add when stride 1 and in == out), features.18 = 1x1 conv + BN +
  ReLU6, adaptive average pool, classifier.0 = Dropout (identity in eval),
  classifier.1 = Linear.

The structure (blocks per stage, downsample presence, expansion) is
discovered from the state_dict's keys, channel counts from the tensors'
shapes, so any width multiplier, input channel count and class count work;
strides come from the architecture. The number of blocks is also checked
against what the architecture name says, every tensor must be consumed
exactly once (``num_batches_tracked`` included, which must be a 0-d int64 as
PyTorch saves it), and the file's key set must equal the key set the
torchvision-style module tree would have.

Usage:
    torchvision_reference.py ARCH MODEL.safetensors INPUT.safetensors OUT.json
        [--width-mult W]

INPUT.safetensors holds ``input``: float32 [N, C, H, W] (NCHW, as PyTorch
takes it). OUT.json receives ``logits`` ([N][classes], float64), the
expected key list and a structural summary. With ``--width-mult`` the
MobileNetV2 channel counts are also checked against torchvision's
``_make_divisible`` rule.
"""

import argparse
import json
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from safetensors.numpy import load_file

BN_EPS = 1e-5
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# torchvision ImageNet ResNets: (block kind, blocks per stage).
IMAGENET_RESNETS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}

# torchvision MobileNetV2's inverted_residual_setting: t, c, n, s.
MOBILENET_V2_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


class ReferenceError(Exception):
    pass


def check(condition, message):
    if not condition:
        raise ReferenceError(message)


# ---------------------------------------------------------------- state dict


class StateDict:
    """The tensors of a state_dict; every one must be taken exactly once."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.taken = {}

    def has(self, name):
        return name in self.tensors

    def shape(self, name):
        check(name in self.tensors, f"missing tensor {name}")
        return tuple(self.tensors[name].shape)

    def take(self, name):
        check(name in self.tensors, f"missing tensor {name}")
        self.taken[name] = self.taken.get(name, 0) + 1
        check(self.taken[name] == 1, f"tensor {name} used more than once")
        t = self.tensors[name]
        if name.endswith(".num_batches_tracked"):
            check(t.dtype == np.int64 and t.shape == (), f"{name}: want a 0-d int64, got {t.dtype} {t.shape}")
            return t
        check(t.dtype == np.float32, f"{name}: want float32, got {t.dtype}")
        return t.astype(np.float64)

    def finish(self):
        unused = sorted(set(self.tensors) - set(self.taken))
        check(not unused, f"tensors the torchvision model does not have: {unused}")
        twice = sorted(k for k, v in self.taken.items() if v != 1)
        check(not twice, f"tensors used more than once: {twice}")


# ------------------------------------------------------------------ operators


def conv2d(x, w, stride, padding, groups=1, bias=None):
    """PyTorch's Conv2d: x [N, C, H, W], w [O, C/groups, kh, kw]."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    check(c == cg * groups and o % groups == 0,
          f"conv: input has {c} channels, weight {w.shape} with groups={groups}")
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :ho, :wo]
    windows = windows.reshape(n, groups, cg, ho, wo, kh, kw)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    y = np.einsum("ngchwij,gocij->ngohw", windows, wg, optimize=True).reshape(n, o, ho, wo)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y


def max_pool2d(x, kernel, stride, padding):
    """PyTorch's MaxPool2d: padding is -inf, so it never wins."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    windows = sliding_window_view(xp, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :ho, :wo]
    return windows.max(axis=(4, 5))


def relu(x):
    return np.maximum(x, 0.0)


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def linear(x, w, b):
    """nn.Linear: x [N, in], w [out, in]."""
    check(x.shape[1] == w.shape[1], f"linear: input {x.shape}, weight {w.shape}")
    return x @ w.T + b


def global_avg_pool(x):
    return x.mean(axis=(2, 3))


class Ops:
    """Layers reading their tensors from the state dict by PyTorch name."""

    def __init__(self, sd):
        self.sd = sd
        self.log = []

    def conv(self, name, x, stride, groups=1):
        w = self.sd.take(f"{name}.weight")
        check(w.ndim == 4 and w.shape[2] == w.shape[3], f"{name}.weight: want OIHW square, got {w.shape}")
        # Every conv in these models pads by kernel // 2 (7 -> 3, 3 -> 1, 1 -> 0).
        y = conv2d(x, w, stride, w.shape[2] // 2, groups)
        self.log.append(f"{name}: {tuple(x.shape)} -> {tuple(y.shape)} s{stride} g{groups}")
        return y

    def bn(self, name, x):
        weight, bias = self.sd.take(f"{name}.weight"), self.sd.take(f"{name}.bias")
        mean, var = self.sd.take(f"{name}.running_mean"), self.sd.take(f"{name}.running_var")
        self.sd.take(f"{name}.num_batches_tracked")
        c = x.shape[1]
        for t, what in ((weight, "weight"), (bias, "bias"), (mean, "running_mean"), (var, "running_var")):
            check(t.shape == (c,), f"{name}.{what}: want ({c},), got {t.shape}")
        scale = weight / np.sqrt(var + BN_EPS)
        return (x - mean[None, :, None, None]) * scale[None, :, None, None] + bias[None, :, None, None]

    def fc(self, name, x):
        return linear(x, self.sd.take(f"{name}.weight"), self.sd.take(f"{name}.bias"))


# -------------------------------------------------------------------- models


def parse_arch(arch):
    if arch == "mobilenet_v2":
        return ("mobilenet_v2", None, None)
    check(arch.startswith("resnet") and arch[6:].isdigit(), f"unknown architecture {arch}")
    depth = int(arch[6:])
    if depth in IMAGENET_RESNETS:
        kind, blocks = IMAGENET_RESNETS[depth]
        return ("imagenet_resnet", kind, blocks)
    check((depth - 2) % 6 == 0 and depth >= 8, f"{arch}: not a torchvision ResNet nor a 6n+2 CIFAR ResNet")
    return ("cifar_resnet", "basic", [(depth - 2) // 6] * 3)


def count_blocks(sd, prefix):
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd.tensors):
        n += 1
    return n


def bn_keys(name):
    return [f"{name}.{k}" for k in BN_KEYS]


def resnet_block(ops, sd, name, x, kind, stride, keys):
    """BasicBlock / Bottleneck (v1.5) of torchvision; CIFAR uses BasicBlock."""
    in_channels = x.shape[1]
    convs = ["conv1", "conv2"] + (["conv3"] if kind == "bottleneck" else [])
    check(sd.has(f"{name}.conv3.weight") == (kind == "bottleneck"),
          f"{name}: conv3 present={sd.has(f'{name}.conv3.weight')} but the architecture has {kind} blocks")
    for i, conv in enumerate(convs, 1):
        keys += [f"{name}.{conv}.weight"] + bn_keys(f"{name}.bn{i}")
    out_channels = sd.shape(f"{name}.{convs[-1]}.weight")[0]
    has_downsample = sd.has(f"{name}.downsample.0.weight")
    # torchvision: downsample iff stride != 1 or inplanes != planes * expansion.
    check(has_downsample == (stride != 1 or in_channels != out_channels),
          f"{name}: downsample present={has_downsample}, stride {stride}, {in_channels} -> {out_channels} channels")
    if has_downsample:
        keys += [f"{name}.downsample.0.weight"] + bn_keys(f"{name}.downsample.1")

    if kind == "basic":
        y = relu(ops.bn(f"{name}.bn1", ops.conv(f"{name}.conv1", x, stride)))
        y = ops.bn(f"{name}.bn2", ops.conv(f"{name}.conv2", y, 1))
    else:
        y = relu(ops.bn(f"{name}.bn1", ops.conv(f"{name}.conv1", x, 1)))
        check(sd.shape(f"{name}.conv2.weight")[2] == 3, f"{name}.conv2 must be 3x3")
        y = relu(ops.bn(f"{name}.bn2", ops.conv(f"{name}.conv2", y, stride)))
        y = ops.bn(f"{name}.bn3", ops.conv(f"{name}.conv3", y, 1))
    if has_downsample:
        check(sd.shape(f"{name}.downsample.0.weight")[2:] == (1, 1), f"{name}.downsample.0 must be 1x1")
        identity = ops.bn(f"{name}.downsample.1", ops.conv(f"{name}.downsample.0", x, stride))
    else:
        identity = x
    check(identity.shape == y.shape, f"{name}: residual {identity.shape} vs {y.shape}")
    return relu(y + identity)


def resnet(ops, sd, x, family, kind, blocks, keys, summary):
    stem_kernel = 7 if family == "imagenet_resnet" else 3
    check(sd.shape("conv1.weight")[2:] == (stem_kernel, stem_kernel),
          f"conv1: want {stem_kernel}x{stem_kernel}, got {sd.shape('conv1.weight')}")
    keys += ["conv1.weight"] + bn_keys("bn1")
    if family == "imagenet_resnet":
        x = relu(ops.bn("bn1", ops.conv("conv1", x, 2)))
        x = max_pool2d(x, 3, 2, 1)
    else:
        x = relu(ops.bn("bn1", ops.conv("conv1", x, 1)))
    stages = len(blocks)
    check(count_blocks(sd, f"layer{stages + 1}") == 0, f"unexpected layer{stages + 1}")
    found = [count_blocks(sd, f"layer{s}") for s in range(1, stages + 1)]
    check(found == blocks, f"blocks per stage: file has {found}, the architecture {blocks}")
    summary["blocks"] = found
    for s in range(1, stages + 1):
        for b in range(blocks[s - 1]):
            stride = 2 if (s > 1 and b == 0) else 1
            x = resnet_block(ops, sd, f"layer{s}.{b}", x, kind, stride, keys)
    keys += ["fc.weight", "fc.bias"]
    return ops.fc("fc", global_avg_pool(x))


def make_divisible(v, divisor=8):
    """torchvision's _make_divisible (min_value = divisor)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mobilenet_v2(ops, sd, x, keys, summary, width_mult):
    # Expected (stride, expansion) of features.1..17 from the setting.
    plan = []
    for t, c, n, s in MOBILENET_V2_SETTING:
        for i in range(n):
            plan.append((s if i == 0 else 1, t, c))
    check(count_blocks(sd, "features") == len(plan) + 2,
          f"features: file has {count_blocks(sd, 'features')} modules, mobilenet_v2 has {len(plan) + 2}")
    if width_mult is not None:
        check(sd.shape("features.0.0.weight")[0] == make_divisible(32 * width_mult),
              f"features.0: {sd.shape('features.0.0.weight')[0]} channels, torchvision has "
              f"{make_divisible(32 * width_mult)} at width {width_mult}")
        check(sd.shape("features.18.0.weight")[0] == make_divisible(1280 * max(1.0, width_mult)),
              "features.18: last_channel differs from torchvision's")

    keys += ["features.0.0.weight"] + bn_keys("features.0.1")
    x = relu6(ops.bn("features.0.1", ops.conv("features.0.0", x, 2)))
    residuals = []
    for i, (stride, t, c) in enumerate(plan, 1):
        name = f"features.{i}.conv"
        inp = x.shape[1]
        expand = sd.has(f"{name}.0.0.weight") and sd.shape(f"{name}.0.0.weight")[2:] == (1, 1)
        check(expand == (t != 1), f"features.{i}: expansion layer present={expand}, expand_ratio {t}")
        y = x
        k = 0
        if expand:
            keys += [f"{name}.0.0.weight"] + bn_keys(f"{name}.0.1")
            hidden = sd.shape(f"{name}.0.0.weight")[0]
            check(hidden == int(round(inp * t)), f"features.{i}: hidden {hidden}, want round({inp} * {t})")
            y = relu6(ops.bn(f"{name}.0.1", ops.conv(f"{name}.0.0", y, 1)))
            k = 1
        hidden = y.shape[1]
        # depthwise 3x3 (groups = channels, weight [hidden, 1, 3, 3])
        check(sd.shape(f"{name}.{k}.0.weight") == (hidden, 1, 3, 3),
              f"features.{i}: depthwise weight {sd.shape(f'{name}.{k}.0.weight')}, want ({hidden}, 1, 3, 3)")
        keys += [f"{name}.{k}.0.weight"] + bn_keys(f"{name}.{k}.1")
        y = relu6(ops.bn(f"{name}.{k}.1", ops.conv(f"{name}.{k}.0", y, stride, groups=hidden)))
        # pw-linear: plain Conv2d + BatchNorm2d (no activation)
        keys += [f"{name}.{k + 1}.weight"] + bn_keys(f"{name}.{k + 2}")
        y = ops.bn(f"{name}.{k + 2}", ops.conv(f"{name}.{k + 1}", y, 1))
        oup = y.shape[1]
        if width_mult is not None:
            check(oup == make_divisible(c * width_mult),
                  f"features.{i}: {oup} channels, torchvision has {make_divisible(c * width_mult)}")
        use_res = stride == 1 and inp == oup
        residuals.append(use_res)
        x = x + y if use_res else y
    summary["residual"] = [i for i, r in enumerate(residuals, 1) if r]
    keys += ["features.18.0.weight"] + bn_keys("features.18.1")
    check(sd.shape("features.18.0.weight")[2:] == (1, 1), "features.18.0 must be 1x1")
    x = relu6(ops.bn("features.18.1", ops.conv("features.18.0", x, 1)))
    x = global_avg_pool(x)
    # classifier.0 is Dropout(0.2): the identity in eval mode; it has no tensors.
    keys += ["classifier.1.weight", "classifier.1.bias"]
    return ops.fc("classifier.1", x)


def forward(arch, tensors, images, width_mult=None):
    """Eval-mode logits [N, classes] (float64), the key set the
    torchvision-style module tree has, and a summary."""
    family, kind, blocks = parse_arch(arch)
    sd = StateDict(tensors)
    ops = Ops(sd)
    keys = []
    summary = {"family": family}
    x = images.astype(np.float64)
    if family == "mobilenet_v2":
        logits = mobilenet_v2(ops, sd, x, keys, summary, width_mult)
    else:
        logits = resnet(ops, sd, x, family, kind, blocks, keys, summary)
    check(len(keys) == len(set(keys)), "expected keys repeat")
    check(set(keys) == set(tensors),
          f"key sets differ: missing {sorted(set(keys) - set(tensors))}, extra {sorted(set(tensors) - set(keys))}")
    sd.finish()
    summary["layers"] = ops.log
    return logits, keys, summary


# ----------------------------------------------------------------- self-test


def _self_test():
    """The vectorised operators against direct loops."""
    rng = np.random.default_rng(1)
    for (n, c, h, w, o, k, s, p, g) in [(2, 4, 7, 6, 6, 3, 2, 1, 2), (1, 3, 5, 5, 3, 3, 1, 1, 3),
                                        (2, 2, 9, 8, 5, 7, 2, 3, 1), (1, 4, 4, 4, 8, 1, 2, 0, 1)]:
        x = rng.standard_normal((n, c, h, w))
        wt = rng.standard_normal((o, c // g, k, k))
        y = conv2d(x, wt, s, p, g)
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        direct = np.zeros((n, o, ho, wo))
        og, cg = o // g, c // g
        for b in range(n):
            for oc in range(o):
                grp = oc // og
                for yy in range(ho):
                    for xx in range(wo):
                        patch = xp[b, grp * cg:(grp + 1) * cg, yy * s:yy * s + k, xx * s:xx * s + k]
                        direct[b, oc, yy, xx] = np.sum(patch * wt[oc])
        check(np.allclose(y, direct, atol=1e-12), "self-test: conv2d differs from direct loops")
    x = rng.standard_normal((2, 3, 7, 6)) - 5  # all negative: zero padding would win
    y = max_pool2d(x, 3, 2, 1)
    for b in range(2):
        for ch in range(3):
            for yy in range(y.shape[2]):
                for xx in range(y.shape[3]):
                    ys, xs = max(0, 2 * yy - 1), max(0, 2 * xx - 1)
                    want = x[b, ch, ys:2 * yy + 2, xs:2 * xx + 2].max()
                    check(y[b, ch, yy, xx] == want, "self-test: max_pool2d differs from direct loops")
    check(make_divisible(32 * 0.25) == 8 and make_divisible(1280) == 1280 and make_divisible(96 * 0.35) == 32,
          "self-test: make_divisible")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch")
    parser.add_argument("model")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--width-mult", type=float, default=None)
    args = parser.parse_args(argv)
    _self_test()
    tensors = load_file(args.model)
    images = load_file(args.input)
    check(set(images) == {"input"}, f"input file: want one tensor 'input', got {sorted(images)}")
    x = images["input"]
    check(x.dtype == np.float32 and x.ndim == 4, f"input: want float32 NCHW, got {x.dtype} {x.shape}")
    logits, keys, summary = forward(args.arch, tensors, x, args.width_mult)
    with open(args.output, "w") as f:
        json.dump({"arch": args.arch, "logits": logits.tolist(), "expected_keys": sorted(keys),
                   "summary": summary}, f)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ReferenceError as e:
        print(f"reference: {e}", file=sys.stderr)
        sys.exit(1)
