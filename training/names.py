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
    EFFICIENTNET_LITE0 = "efficientnet-lite0"
    EFFICIENTNET_LITE1 = "efficientnet-lite1"
    EFFICIENTNET_LITE2 = "efficientnet-lite2"

    @property
    def lite_variant(self) -> str | None:
        """``lite0`` / ``lite1`` / ``lite2`` for the EfficientNet-Lite family, else ``None``."""
        prefix = "efficientnet-"
        return self.value[len(prefix) :] if self.value.startswith(f"{prefix}lite") else None
