"""PyTorch reference: train-step time of the same three models as our JAX benchmark.

This is the script behind the PyTorch columns of docs/performance.md. It rebuilds, in PyTorch,
the models that `configs/benchmark.py` times in JAX, with exactly the same parameter counts
(asserted below), and times one training step on the CPU or on a CUDA GPU (`--device`):

    forward of a (B, 3, S, S) float32 random batch (model in train mode: dropout on, BatchNorm
    with batch statistics) -> per-image soft Dice loss 1 - (2 sum(p*y) + 1) / (sum(p) + sum(y) + 1)
    on p = sigmoid(logits) against a random binary mask, averaged over the batch -> backward ->
    torch.optim.Adam(lr=1e-3) step -> zero_grad(set_to_none=True).

The batch is drawn once and reused, already on the device, as the JAX benchmark feeds synthetic
batches already in memory. `--warmup` steps run first and are not timed; then each of `--steps`
steps is timed on its own. Eager CPU execution is synchronous. On CUDA, where kernels run
asynchronously, torch.cuda.synchronize() is called right before a step's clock starts and right
before it stops, so a step's time is the wall time from its first launch to the end of its last
kernel, host overhead included (which is what CUDA graphs remove). Per run it prints one line:
model, device, compile mode, memory format, Adam implementation, parameter count, median step
time, its 10th and 90th percentiles, and train images/s = batch / median step time. Compiled runs
add `compile`: the wall time of their warm-up steps, which hold the compilation (and, with
reduce-overhead, CUDA graph warm-up and capture), and the number of graphs and graph breaks.
The header gives the date, the torch version and, on CUDA, the GPU.

Models (the layouts of lesion_jax/models, which follow the paper's architecture notes):
  unet_ifc16               U-Net, ifC 16, dropout 0.2, no BatchNorm            1,962,625 params
  mobile_deeplab_alpha035  DeepLab + MobileNetV2 alpha 0.35, OS 16, no ASPP,
                           no decoder (the paper's "reduced Mobile DeepLab")     440,417 params
  mobile_deeplab_alpha100  the same with alpha 1.0                             2,108,417 params

Compile modes: `--compile` takes one or a comma-separated list, each run in turn for each model
in one process, eager first:
  none             the eager step above, with PyTorch's default Adam (for-loop on the CPU,
                   foreach on CUDA).
  default          torch.compile(step) of the whole step function: forward, loss, backward,
                   optimizer step and zero_grad.
  reduce-overhead  the same with mode="reduce-overhead": Inductor replays the graphs as CUDA
                   graphs. torch.compiler.cudagraph_mark_step_begin() opens each step, and the
                   loss is read (.item()) before the next step, whose replay overwrites it.
                   Compiled runs take at least 3 warm-up steps (compilation with the CUDA graph
                   warm-up run, recording, first replay).
                   On the CPU there are no CUDA graphs: Inductor skips them and compiles as in
                   default; the script runs it anyway, notes this and counts the skipped graphs.
How whole the compiled step is: where torch has torch._dynamo.config.trace_autograd_ops
(2.13 does), it is switched on so that loss.backward() is traced into the forward's graph;
otherwise Dynamo breaks the graph there and runs AOTAutograd's compiled backward (with torch
2.13 on the CPU, the traced step's updates match eager ones in float64). PyTorch itself breaks
the graph around optimizer.step() (see _use_grad in torch/optim/optimizer.py) and never traces
zero_grad, so the step is at best one graph for forward + backward and one for the optimizer.
Compiled runs use Adam(fused=True), on CUDA and, from torch 2.4 on, on the CPU (with an older
torch the CPU falls back to foreach; the line's `adam` field says which ran). Dynamo does not
trace into the fused kernel (torch.compiler.disable), so it runs as one eager op after the
compiled graph (graphs 1), also outside the CUDA graphs; `--compiled_adam foreach` lets Inductor
compile the optimizer's foreach ops instead (PyTorch's "compiled optimizer"; graphs 2). Compile
times depend on Inductor's on-disk cache (warm on a second run);
TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 gives cold ones.

On CUDA, torch.backends.cudnn.benchmark is on (fixed shapes; the warm-up covers the autotuning,
as XLA autotunes too); the header prints it with the TF32 settings (PyTorch's default: TF32 for
convolutions, full float32 for matmuls).

Run it in a separate virtualenv with PyTorch and numpy (never lesion_jax), from the repository
root. The CPU table (PyTorch eager, NCHW and channels_last):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python docs/pytorch_reference.py --model all --image_size 256 \\
        --batch 4 --steps 10 --warmup 2 --threads 2            # then again with --channels_last

The GPU table | model | lesion_jax step | PyTorch eager (NCHW / channels_last) | torch.compile |
torch.compile(mode="reduce-overhead") |, on the GPU machine with a CUDA build of torch (the
lesion_jax column is `python launch.py --config configs/benchmark.py`, at 512x512, batch 4):

    python docs/pytorch_reference.py --device cuda --model all --image_size 512 --batch 4 \\
        --steps 50 --warmup 5 --compile none,default,reduce-overhead
    python docs/pytorch_reference.py --device cuda --model all --image_size 512 --batch 4 \\
        --steps 50 --warmup 5 --compile none,default,reduce-overhead --channels_last

`--channels_last` stores activations and weights in NHWC memory format (the default is
PyTorch's NCHW). `--tf_padding` pads the stride-2 convolutions of MobileNetV2 the TensorFlow
'SAME' way (0 before, 1 after, as our JAX code and Keras do) with an explicit F.pad; by default
they use PyTorch's symmetric padding=1, which gives the same output sizes and the same
arithmetic with one copy fewer (the pixels they see are shifted by one, which does not change
the speed). `--threads` sets torch.set_num_threads; it matters only on the CPU.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EXPECTED_PARAMS = {
    "unet_ifc16": 1_962_625,
    "mobile_deeplab_alpha035": 440_417,
    "mobile_deeplab_alpha100": 2_108_417,
}
MODEL_NAMES = tuple(EXPECTED_PARAMS)


# ----------------------------------------------------------------------------------------------
# U-Net (lesion_jax/models/unet.py: block='conv', attention=False, batch_norm=False)
# ----------------------------------------------------------------------------------------------

class UNetBlock(nn.Module):
    """3x3 conv (bias) -> ReLU -> Dropout -> 3x3 conv (bias) -> ReLU."""

    def __init__(self, in_channels: int, channels: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.dropout(x)
        return F.relu(self.conv2(x))


class UNet(nn.Module):
    """Four levels (f, 2f, 4f, 8f), 16f bottleneck, 2x2 max-pool, nearest x2 up + concat, 1x1 head."""

    def __init__(self, ifc: int = 16, levels: int = 4, dropout: float = 0.2,
                 num_classes: int = 1):
        super().__init__()
        widths = [ifc * 2 ** level for level in range(levels)]
        self.encoder = nn.ModuleList()
        in_channels = 3
        for width in widths:
            self.encoder.append(UNetBlock(in_channels, width, dropout))
            in_channels = width
        self.bottleneck = UNetBlock(in_channels, ifc * 2 ** levels, dropout)
        in_channels = ifc * 2 ** levels
        # decoder[i] serves level levels-1-i (deepest first); input = [upsampled, skip].
        self.decoder = nn.ModuleList()
        for width in reversed(widths):
            self.decoder.append(UNetBlock(in_channels + width, width, dropout))
            in_channels = width
        self.head = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x):
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


# ----------------------------------------------------------------------------------------------
# DeepLab + MobileNetV2 (lesion_jax/models/encoders/mobilenet_v2.py, lesion_jax/models/deeplab.py)
# ----------------------------------------------------------------------------------------------

# (expansion t, output channels c, stride s) of Keras MobileNetV2 blocks 0..16.
MOBILENET_V2_BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
KERAS_BN_EPS, KERAS_BN_MOMENTUM = 1e-3, 0.999       # encoder BN (Keras)
HEAD_BN_EPS, HEAD_BN_MOMENTUM = 1e-5, 0.9997        # head BN (TF DeepLab)
HEAD_CHANNELS = 256


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor` (at least `divisor`), never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def batch_norm(channels: int, eps: float, tf_momentum: float) -> nn.BatchNorm2d:
    # TF/Flax momentum m keeps m of the running average; PyTorch's momentum is the new part, 1 - m.
    return nn.BatchNorm2d(channels, eps=eps, momentum=1.0 - tf_momentum)


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU6 / ReLU; `depthwise` makes it groups=C.

    Stride 1: symmetric 'same' padding (dilation * (k - 1) / 2 each side, as TF 'SAME' gives for
    odd k). Stride 2: symmetric padding=1, or with `tf_padding` TF 'SAME' (0 before, 1 after for
    even sizes) through an explicit F.pad.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                 dilation: int = 1, depthwise: bool = False, activation: str | None = "relu6",
                 bn_eps: float = KERAS_BN_EPS, bn_momentum: float = KERAS_BN_MOMENTUM,
                 tf_padding: bool = False):
        super().__init__()
        if depthwise and in_channels != out_channels:
            raise ValueError("depthwise conv needs in_channels == out_channels")
        total = dilation * (kernel - 1)
        self.explicit_pad = None
        padding = total // 2
        if stride > 1 and tf_padding:
            # TF 'SAME' on a size divisible by the stride pads effective_kernel - stride in all,
            # the extra pixel after: (0, 1) for a 3x3 kernel with stride 2.
            pad = max(total + 1 - stride, 0)
            before, after = pad // 2, pad - pad // 2
            self.explicit_pad = (before, after, before, after)  # (left, right, top, bottom)
            padding = 0
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                              dilation=dilation, groups=in_channels if depthwise else 1,
                              bias=False)
        self.bn = batch_norm(out_channels, bn_eps, bn_momentum)
        self.activation = activation

    def forward(self, x):
        if self.explicit_pad is not None:
            x = F.pad(x, self.explicit_pad)
        x = self.bn(self.conv(x))
        if self.activation == "relu6":
            x = F.relu6(x)
        elif self.activation == "relu":
            x = F.relu(x)
        return x


class InvertedResidual(nn.Module):
    """Keras MobileNetV2 block: [1x1 expand -> BN -> ReLU6] -> 3x3 depthwise -> BN -> ReLU6
    -> 1x1 project -> BN, plus the input when stride is 1 and the width is kept."""

    def __init__(self, in_channels: int, expanded: int, out_channels: int, expand: bool,
                 stride: int, dilation: int, tf_padding: bool):
        super().__init__()
        self.expand = ConvBN(in_channels, expanded, 1) if expand else None
        mid = expanded if expand else in_channels
        self.depthwise = ConvBN(mid, mid, 3, stride=stride, dilation=dilation, depthwise=True,
                                tf_padding=tf_padding)
        self.project = ConvBN(mid, out_channels, 1, activation=None)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class MobileNetV2Encoder(nn.Module):
    """Keras-layout MobileNetV2 blocks 0-16 (no final 1280 conv); strides past `output_stride`
    become 1 and the later depthwise convs dilate (the block that would stride keeps rate 1)."""

    def __init__(self, alpha: float, output_stride: int = 16, tf_padding: bool = False):
        super().__init__()
        stem = make_divisible(32 * alpha, 8)
        self.stem = ConvBN(3, stem, 3, stride=2, tf_padding=tf_padding)
        blocks = []
        in_channels, current_stride, rate = stem, 2, 1
        for index, (expansion, channels, stride) in enumerate(MOBILENET_V2_BLOCKS):
            if current_stride == output_stride:
                block_stride, block_rate = 1, rate
                rate *= stride
            else:
                block_stride, block_rate = stride, 1
                current_stride *= stride
            out = make_divisible(int(channels * alpha), 8)
            blocks.append(InvertedResidual(in_channels, expansion * in_channels, out,
                                           expand=index > 0, stride=block_stride,
                                           dilation=block_rate, tf_padding=tf_padding))
            in_channels = out
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = in_channels

    def forward(self, x):
        return self.blocks(self.stem(x))


class MobileDeepLab(nn.Module):
    """DeepLab over MobileNetV2 with TF DeepLab's MobileNetV2 head (no ASPP branches, no decoder):
    [image pooling -> 1x1 256 BN ReLU (broadcast back), 1x1 256 BN ReLU] -> concat -> 1x1 256
    BN ReLU -> dropout 0.1 -> 1x1 logits (bias) -> bilinear (half-pixel) resize to the input."""

    def __init__(self, alpha: float, output_stride: int = 16, num_classes: int = 1,
                 dropout: float = 0.1, tf_padding: bool = False):
        super().__init__()
        self.encoder = MobileNetV2Encoder(alpha, output_stride, tf_padding)
        c = self.encoder.out_channels
        head_bn = dict(activation="relu", bn_eps=HEAD_BN_EPS, bn_momentum=HEAD_BN_MOMENTUM)
        self.image_pooling = ConvBN(c, HEAD_CHANNELS, 1, **head_bn)
        self.aspp0 = ConvBN(c, HEAD_CHANNELS, 1, **head_bn)
        self.concat_projection = ConvBN(2 * HEAD_CHANNELS, HEAD_CHANNELS, 1, **head_bn)
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Conv2d(HEAD_CHANNELS, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        features = self.encoder(x)
        pooled = self.image_pooling(features.mean(dim=(2, 3), keepdim=True))
        branches = [pooled.expand(-1, -1, features.shape[2], features.shape[3]),
                    self.aspp0(features)]
        y = self.concat_projection(torch.cat(branches, dim=1))
        y = self.logits(self.dropout(y))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def build_model(name: str, tf_padding: bool = False) -> nn.Module:
    if name == "unet_ifc16":
        return UNet(ifc=16, dropout=0.2)
    if name == "mobile_deeplab_alpha035":
        return MobileDeepLab(alpha=0.35, output_stride=16, tf_padding=tf_padding)
    if name == "mobile_deeplab_alpha100":
        return MobileDeepLab(alpha=1.0, output_stride=16, tf_padding=tf_padding)
    raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES} or 'all'")


def count_params(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, as Flax's batch_stats)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------
# Train step, compilation and timing
# ----------------------------------------------------------------------------------------------

COMPILE_MODES = ("none", "default", "reduce-overhead")
# Compiled runs take at least this many warm-up steps: the first compiles (and, on CUDA with
# reduce-overhead, is the CUDA graph trees' eager warm-up run), the second records the CUDA
# graphs, the third is their first replay. None of it is timed; a compilation later on is
# reported on the output line.
MIN_COMPILED_WARMUP = 3


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0):
    """Mean over the batch of 1 - (2 sum(p*y) + s) / (sum(p) + sum(y) + s), per image."""
    probs = torch.sigmoid(logits).flatten(1)
    masks = masks.flatten(1)
    dice = (2.0 * (probs * masks).sum(1) + smooth) / (probs.sum(1) + masks.sum(1) + smooth)
    return (1.0 - dice).mean()


def make_optimizer(model: nn.Module, compiled: bool, args: argparse.Namespace):
    """Adam(lr=1e-3) and the name of the implementation that runs, for the output line."""
    params = list(model.parameters())
    if not compiled:
        # PyTorch's default, as in a plain training loop: foreach on CUDA, the for-loop on the CPU.
        return torch.optim.Adam(params, lr=1e-3), ("foreach" if args.device == "cuda"
                                                   else "for-loop")
    if args.compiled_adam == "fused":
        try:
            return torch.optim.Adam(params, lr=1e-3, fused=True), "fused"
        except RuntimeError:
            pass  # fused=True on the CPU needs torch >= 2.4; older versions refuse it here
    return torch.optim.Adam(params, lr=1e-3, foreach=True), "foreach"


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    masks: torch.Tensor, name: str):
    """The step that is timed, eager or as the function handed to torch.compile."""

    def step():
        logits = model(images)
        if logits.shape != masks.shape:
            raise AssertionError(f"{name}: logits {tuple(logits.shape)}, expected "
                                 f"{tuple(masks.shape)}")
        loss = soft_dice_loss(logits, masks)
        loss.backward()
        # Detached before the optimizer: torch.compile breaks the graph at optimizer.step(), and
        # a live loss whose autograd graph backward() has consumed would cost one break more.
        loss = loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def compile_step(step, mode: str):
    """torch.compile of the whole step, with backward traced into the graph where torch can."""
    import torch._dynamo as dynamo

    # Each run compiles the same function (a new closure), so start from empty caches: no stale
    # guards, no recompile limit reached, and the previous run's CUDA graph pools freed.
    dynamo.reset()
    if hasattr(dynamo.config, "trace_autograd_ops"):
        dynamo.config.trace_autograd_ops = True
    return torch.compile(step, mode=mode)


def compile_counters(clear: bool = False) -> dict:
    """Dynamo's and Inductor's counters since the last clear: frames compiled (graph or not),
    graphs, graph breaks, graphs Inductor did not run as CUDA graphs."""
    from torch._dynamo.utils import counters

    if clear:
        counters.clear()
    return dict(frames=counters["frames"]["total"], graphs=counters["stats"]["unique_graphs"],
                breaks=sum(counters["graph_break"].values()),
                cudagraph_skips=counters["inductor"]["cudagraph_skips"])


def run_steps(step, count: int, device: str, mark_cudagraph_step: bool):
    """Run `count` steps; return each one's wall time in seconds and its loss."""
    times, losses = [], []
    for _ in range(count):
        if device == "cuda":
            torch.cuda.synchronize()  # the clock starts with nothing queued on the GPU
        start = time.perf_counter()
        if mark_cudagraph_step:
            # A new training iteration for CUDA graph trees: the last step's outputs may go.
            torch.compiler.cudagraph_mark_step_begin()
        loss = step()
        if device == "cuda":
            torch.cuda.synchronize()  # ... and stops when the step's last kernel has finished
        times.append(time.perf_counter() - start)
        # Read now, outside the clock: the next replay of a CUDA graph overwrites its outputs.
        losses.append(loss.item())
    return times, losses


def time_model(name: str, mode: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model = build_model(name, args.tf_padding)
    params = count_params(model)
    if params != EXPECTED_PARAMS[name]:
        raise AssertionError(f"{name}: {params:,} parameters, expected "
                             f"{EXPECTED_PARAMS[name]:,} (the JAX model's count)")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device=args.device, memory_format=memory_format)
    model.train()
    compiled = mode != "none"
    optimizer, adam = make_optimizer(model, compiled, args)
    # Drawn on the CPU, then moved: the same weights and batch on either device.
    images = torch.rand(args.batch, 3, args.image_size, args.image_size)
    images = images.to(args.device).contiguous(memory_format=memory_format)
    masks = (torch.rand(args.batch, 1, args.image_size, args.image_size) > 0.5).float()
    masks = masks.to(args.device)
    step = make_train_step(model, optimizer, images, masks, name)
    warmup = args.warmup
    if compiled:
        step = compile_step(step, mode)
        warmup = max(warmup, MIN_COMPILED_WARMUP)
        compile_counters(clear=True)
    mark = mode == "reduce-overhead" and args.device == "cuda"
    warmup_times, _ = run_steps(step, warmup, args.device, mark)
    row = dict(model=name, mode=mode, adam=adam, params=params)
    if compiled:
        row.update(compile_s=sum(warmup_times), **compile_counters())
    times, losses = run_steps(step, args.steps, args.device, mark)
    if not np.all(np.isfinite(losses)):
        raise AssertionError(f"{name} ({mode}): non-finite loss in {losses}")
    if compiled:
        # A compilation while the clock ran would make the median meaningless: say so.
        row["recompiled"] = compile_counters()["frames"] - row["frames"]
    ms = np.asarray(times) * 1e3
    median = float(np.median(ms))
    row.update(median_ms=median, p10_ms=float(np.percentile(ms, 10)),
               p90_ms=float(np.percentile(ms, 90)), images_per_s=args.batch / (median / 1e3))
    return row


# ----------------------------------------------------------------------------------------------
# Command line and output
# ----------------------------------------------------------------------------------------------

def parse_compile_modes(text: str) -> tuple:
    """'default,none' -> ('none', 'default'): known modes, each once, in COMPILE_MODES order."""
    modes = [mode.strip() for mode in text.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(COMPILE_MODES))
    if unknown or not modes:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one or more of {', '.join(COMPILE_MODES)}, comma-separated")
    return tuple(mode for mode in COMPILE_MODES if mode in modes)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all", choices=MODEL_NAMES + ("all",))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--compile", default=("none",), type=parse_compile_modes,
                        help="none (eager), default, reduce-overhead, or a comma-separated list "
                             "(each run per model, eager first)")
    parser.add_argument("--compiled_adam", default="fused", choices=("fused", "foreach"),
                        help="Adam under torch.compile: fused kernel (eager op) or foreach ops "
                             "compiled by Inductor")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2,
                        help=f"untimed steps first (at least {MIN_COMPILED_WARMUP} when compiled)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads (matters on the CPU only)")
    parser.add_argument("--channels_last", action="store_true",
                        help="NHWC memory format for weights and activations")
    parser.add_argument("--tf_padding", action="store_true",
                        help="TF 'SAME' (0, 1) padding on MobileNetV2's stride-2 convs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.image_size < 16 or args.image_size % 16:
        parser.error("--image_size must be a positive multiple of 16 (U-Net and OS 16)")
    if args.batch < 2:
        parser.error("--batch must be >= 2 (BatchNorm of the 1x1 image-pooling branch needs "
                     "more than one value per channel in train mode)")
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("need --steps >= 1, --warmup >= 0, --threads >= 1")
    return args


def header_lines(args: argparse.Namespace) -> list:
    """What a table made from this run needs to say: when, which torch, which device, settings."""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    place = (f"threads {torch.get_num_threads()}" if args.device == "cpu"
             else f"device {torch.cuda.get_device_name()}")
    compiled_warmup = (f" ({max(args.warmup, MIN_COMPILED_WARMUP)} when compiled)"
                       if args.compile != ("none",) and args.warmup < MIN_COMPILED_WARMUP else "")
    lines = [f"# {now}; torch {torch.__version__}, {place}, "
             f"python {platform.python_version()}, {platform.machine()}; "
             f"image {args.image_size}x{args.image_size}, batch {args.batch}, "
             f"{args.warmup} warm-up{compiled_warmup} + {args.steps} timed steps, "
             f"{'channels_last' if args.channels_last else 'contiguous (NCHW)'}"
             f"{', TF padding' if args.tf_padding else ''}"]
    if args.device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        lines.append(f"# CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
                     f"sm_{major}{minor}; cudnn.benchmark {torch.backends.cudnn.benchmark}, "
                     f"TF32 convolutions {torch.backends.cudnn.allow_tf32}, float32 matmul "
                     f"precision {torch.get_float32_matmul_precision()!r}; timed with "
                     f"torch.cuda.synchronize() around each step")
    if args.compile != ("none",):
        import torch._dynamo as dynamo

        backward = ("traced into the forward's graph (trace_autograd_ops)"
                    if hasattr(dynamo.config, "trace_autograd_ops")
                    else "a graph break (this torch has no trace_autograd_ops)")
        lines.append(f"# torch.compile of the whole step; backward: {backward}; "
                     f"compile = wall time of the warm-up steps")
    if args.device == "cpu" and "reduce-overhead" in args.compile:
        lines.append("# note: reduce-overhead on the CPU: there are no CUDA graphs there, so "
                     "Inductor skips them (counted as cudagraph skips) and compiles as default")
    return lines


def format_row(row: dict, args: argparse.Namespace) -> str:
    memory_format = "channels_last" if args.channels_last else "NCHW"
    line = (f"{row['model']:<24} {args.device:<4} {row['mode']:<15} {memory_format:<13} "
            f"adam {row['adam']:<8}  params {row['params']:>9,}  "
            f"step {row['median_ms']:8.1f} ms (p10 {row['p10_ms']:.1f}, p90 {row['p90_ms']:.1f})  "
            f"train {row['images_per_s']:6.2f} img/s")
    if row["mode"] != "none":
        line += (f"  compile {row['compile_s']:.1f} s, graphs {row['graphs']}, "
                 f"breaks {row['breaks']}")
        if row["cudagraph_skips"]:
            line += f", cudagraph skips {row['cudagraph_skips']}"
        if row["recompiled"]:
            line += f"  WARNING: {row['recompiled']} compilation(s) during the timed steps"
    return line


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"error: --device cuda, but torch {torch.__version__} finds no CUDA GPU "
                     f"here (a CPU-only build, or no driver); use --device cpu")
        # Fixed shapes: let cuDNN pick its fastest kernels during the warm-up, as XLA autotunes.
        torch.backends.cudnn.benchmark = True
    torch.set_num_threads(args.threads)
    names = MODEL_NAMES if args.model == "all" else (args.model,)
    for line in header_lines(args):
        print(line, flush=True)
    for name in names:
        for mode in args.compile:
            print(format_row(time_model(name, mode, args), args), flush=True)


if __name__ == "__main__":
    main()
