"""Self-supervised methods by name: a new method is one file plus one line here."""
from __future__ import annotations

import ml_collections

from sslx.methods.base import Method
from sslx.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
}


def build_method(config: ml_collections.ConfigDict, num_classes: int) -> Method:
    if config.method not in METHODS:
        raise ValueError(f"config.method={config.method!r} is unknown; use one of {sorted(METHODS)}.")
    return METHODS[config.method](config, num_classes)
