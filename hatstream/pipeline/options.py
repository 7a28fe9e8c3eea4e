"""The names a run can be told, for the layers above the pipeline (`watch/`, presets).

The pipeline hands the encoder settings to `media/` and the precision to `inference/`; the lists
themselves stay defined where they are used. A preset checks its values against these, so that the
watcher hands settings to the pipeline without reaching into `media/`.
"""

from __future__ import annotations

from hatstream.inference.precision import PRECISIONS
from hatstream.media.decode import ON_ERROR
from hatstream.media.encode import CONTAINERS, EncodeSettings

__all__ = ["CONTAINERS", "ON_ERROR", "PRECISIONS", "EncodeSettings"]
