"""Weight-sharing supernets: elastic ops, search spaces, families, training and extraction.

    net = supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1)
    arch = net.space.sample(0); net.set_active(arch)
    logits = net(supernets.prepare_input(x, arch))
    subnet = net.extract(arch)          # stock torch layers, same outputs
"""

from supernets.base import Supernet, prepare_input
from supernets.bn import recalibrate_bn
from supernets.ofa_bridge import from_ofa
from supernets.registry import SUPERNETS, create, list_supernets, register_supernet
from supernets.space import Arch, Dimension, SearchSpace

__all__ = [
    "SUPERNETS",
    "Arch",
    "Dimension",
    "SearchSpace",
    "Supernet",
    "create",
    "from_ofa",
    "list_supernets",
    "prepare_input",
    "recalibrate_bn",
    "register_supernet",
]
