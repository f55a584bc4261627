"""PyTorch eager reference: train-step time of the same three models as our JAX benchmark.

This is the script behind the PyTorch column of docs/performance.md. It rebuilds, in PyTorch,
the models that `configs/benchmark.py` times in JAX, with exactly the same parameter counts
(asserted below), and times one eager training step on the CPU:

    forward of a (B, 3, S, S) float32 random batch (model in train mode: dropout on, BatchNorm
    with batch statistics) -> per-image soft Dice loss 1 - (2 sum(p*y) + 1) / (sum(p) + sum(y) + 1)
    on p = sigmoid(logits) against a random binary mask, averaged over the batch -> backward ->
    torch.optim.Adam(lr=1e-3) step -> zero_grad(set_to_none=True).

The batch is drawn once and reused, as the JAX benchmark feeds synthetic batches already in
memory. `--warmup` steps run first and are not timed; then each of `--steps` steps is timed on
its own (eager CPU execution is synchronous). Per model it prints one line: parameter count,
median step time, its 10th and 90th percentiles, and train images/s = batch / median step time.

Models (the layouts of lesion_jax/models, which follow the paper's architecture notes):
  unet_ifc16               U-Net, ifC 16, dropout 0.2, no BatchNorm            1,962,625 params
  mobile_deeplab_alpha035  DeepLab + MobileNetV2 alpha 0.35, OS 16, no ASPP,
                           no decoder (the paper's "reduced Mobile DeepLab")     440,417 params
  mobile_deeplab_alpha100  the same with alpha 1.0                             2,108,417 params

Run it in a separate virtualenv with PyTorch (CPU) and numpy, from the repository root:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python docs/pytorch_reference.py --model all --image_size 256 \\
        --batch 4 --steps 10 --warmup 2 --threads 2

`--channels_last` stores activations and weights in NHWC memory format (the default is
PyTorch's NCHW). `--tf_padding` pads the stride-2 convolutions of MobileNetV2 the TensorFlow
'SAME' way (0 before, 1 after, as our JAX code and Keras do) with an explicit F.pad; by default
they use PyTorch's symmetric padding=1, which gives the same output sizes and the same
arithmetic with one copy fewer (the pixels they see are shifted by one, which does not change
the speed).
"""
from __future__ import annotations

import argparse
import platform
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
# Train step and timing
# ----------------------------------------------------------------------------------------------

def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0):
    """Mean over the batch of 1 - (2 sum(p*y) + s) / (sum(p) + sum(y) + s), per image."""
    probs = torch.sigmoid(logits).flatten(1)
    masks = masks.flatten(1)
    dice = (2.0 * (probs * masks).sum(1) + smooth) / (probs.sum(1) + masks.sum(1) + smooth)
    return (1.0 - dice).mean()


def time_model(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model = build_model(name, args.tf_padding)
    params = count_params(model)
    if params != EXPECTED_PARAMS[name]:
        raise AssertionError(f"{name}: {params:,} parameters, expected "
                             f"{EXPECTED_PARAMS[name]:,} (the JAX model's count)")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size)
    images = images.contiguous(memory_format=memory_format)
    masks = (torch.rand(args.batch, 1, args.image_size, args.image_size) > 0.5).float()

    def step():
        logits = model(images)
        if logits.shape != masks.shape:
            raise AssertionError(f"{name}: logits {tuple(logits.shape)}, expected "
                                 f"{tuple(masks.shape)}")
        loss = soft_dice_loss(logits, masks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise AssertionError(f"{name}: non-finite loss {loss.item()}")
    ms = np.asarray(times) * 1e3
    median = float(np.median(ms))
    return dict(model=name, params=params, median_ms=median,
                p10_ms=float(np.percentile(ms, 10)), p90_ms=float(np.percentile(ms, 90)),
                images_per_s=args.batch / (median / 1e3))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all", choices=MODEL_NAMES + ("all",))
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
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


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = MODEL_NAMES if args.model == "all" else (args.model,)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"python {platform.python_version()}, {platform.machine()}; "
          f"image {args.image_size}x{args.image_size}, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, "
          f"{'channels_last' if args.channels_last else 'contiguous (NCHW)'}"
          f"{', TF padding' if args.tf_padding else ''}", flush=True)
    for name in names:
        row = time_model(name, args)
        print(f"{row['model']:<24} params {row['params']:>9,}  "
              f"step {row['median_ms']:8.1f} ms (p10 {row['p10_ms']:.1f}, p90 {row['p90_ms']:.1f})  "
              f"train {row['images_per_s']:6.2f} img/s", flush=True)


if __name__ == "__main__":
    main()
