"""`supernets.train`: the public name of the training recipe (see `supernets.training`)."""

from supernets.training import *  # noqa: F403  (re-exports exactly supernets.training.__all__)
from supernets.training import __all__  # noqa: F401
