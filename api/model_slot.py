"""The one-image prediction model, loaded once on first use and shared by every request.

Loading imports TensorFlow and reads the package, which takes seconds: it happens on the first
``/api/predict`` (or when the service hands over a predictor it loaded already), never at import
or at application start-up, so the API answers health checks at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference.model_package import ModelCard
    from inference.predictor import Predictor

CARD_FILE = "model.json"


class ModelState(StrEnum):
    """What the health endpoint says about the model."""

    DISABLED = "disabled"
    NOT_LOADED = "not_loaded"  # a package is there; it loads on first use
    LOADED = "loaded"
    UNAVAILABLE = "unavailable"  # missing or failed to load


class ModelUnavailable(RuntimeError):  # noqa: N818 - reads as the condition
    """The model cannot be used (disabled, missing or invalid package)."""


@dataclass(frozen=True, slots=True)
class ModelStatus:
    state: ModelState
    name: str | None = None
    version: str | None = None
    reason: str | None = None


class ModelSlot:
    """Holds a :class:`~inference.predictor.Predictor`, loading it at most once."""

    def __init__(
        self, path: Path, *, enabled: bool = True, predictor: Predictor | None = None
    ) -> None:
        self._path = path
        self._enabled = enabled
        self._predictor = predictor
        self._error: str | None = None
        self._lock = threading.Lock()

    def status(self) -> ModelStatus:
        """The model's state without loading it."""
        if not self._enabled:
            return ModelStatus(ModelState.DISABLED)
        predictor = self._predictor
        if predictor is not None:
            card = predictor.card
            return ModelStatus(ModelState.LOADED, card.name, card.version)
        if self._error is not None:
            return ModelStatus(ModelState.UNAVAILABLE, reason=self._error)
        card_path = self._path / CARD_FILE if self._path.is_dir() else self._path
        if not card_path.is_file():
            return ModelStatus(
                ModelState.UNAVAILABLE, reason="no model package at the configured path"
            )
        return ModelStatus(ModelState.NOT_LOADED)

    def card(self) -> ModelCard:
        """The model's card (the loaded one, else read from the package without loading)."""
        from inference.model_package import ModelPackageError, read_card

        if not self._enabled:
            raise ModelUnavailable("inference is disabled in the settings")
        predictor = self._predictor
        if predictor is not None:
            return predictor.card
        try:
            return read_card(self._path)
        except (ModelPackageError, OSError) as exc:
            raise ModelUnavailable(f"the model card cannot be read: {type(exc).__name__}") from exc

    def get(self) -> Predictor:
        """The predictor, loading the package the first time; raises :class:`ModelUnavailable`."""
        if not self._enabled:
            raise ModelUnavailable("inference is disabled in the settings")
        if self._predictor is not None:
            return self._predictor
        with self._lock:
            if self._predictor is not None:
                return self._predictor
            if self._error is not None:
                raise ModelUnavailable(self._error)
            from inference.model_package import ModelPackageError, load_package
            from inference.predictor import Predictor

            try:
                self._predictor = Predictor(load_package(self._path))
            except (ModelPackageError, OSError) as exc:
                self._error = f"the model package cannot be loaded: {type(exc).__name__}"
                raise ModelUnavailable(self._error) from exc
            return self._predictor
