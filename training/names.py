"""Names the command line offers, kept free of Keras so the CLI starts without importing it."""

from __future__ import annotations

import enum


class Architecture(enum.StrEnum):
    """The architectures ``train --arch`` accepts."""

    SMALL = "small"
    EFFICIENTNETB0 = "efficientnetb0"
    RESNET50 = "resnet50"
    DENSENET121 = "densenet121"
    VGG16 = "vgg16"
    MOBILENETV3 = "mobilenetv3"
