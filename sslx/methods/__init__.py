"""Self-supervised methods by name: a new method is one file plus one line here."""
from __future__ import annotations

import ml_collections

from sslx.methods.barlow_twins import BarlowTwins
from sslx.methods.base import Method
from sslx.methods.byol import BYOL
from sslx.methods.dino import DINO
from sslx.methods.moco import MoCoV2, MoCoV3
from sslx.methods.simclr import SimCLR
from sslx.methods.simsiam import SimSiam
from sslx.methods.supcon import SupCon
from sslx.methods.swav import SwAV
from sslx.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "mocov2": MoCoV2,
    "mocov3": MoCoV3,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "supcon": SupCon,
    "dino": DINO,
    "swav": SwAV,
}


def build_method(config: ml_collections.ConfigDict, num_classes: int, total_steps: int,
                 steps_per_epoch: int = 0) -> Method:
    """The method config.method names; `steps_per_epoch` turns its settings given in epochs into steps."""
    if config.method not in METHODS:
        raise ValueError(f"config.method={config.method!r} is unknown; use one of {sorted(METHODS)}.")
    return METHODS[config.method](config, num_classes, total_steps, steps_per_epoch)
