"""Registered supernet families; importing this package registers them."""

from supernets.families import mbv3, resnet, vit

__all__ = ["mbv3", "resnet", "vit"]
