"""Modality encoders. Importing this package registers every built-in encoder type."""
from encoders.base import ENCODERS, InputError, Tokens, ZooError, build_encoder, register_encoder
from encoders import composition, crystal, molecule  # noqa: F401  (registers every encoder type)
from encoders import spectrum  # noqa: F401

__all__ = ["ENCODERS", "InputError", "Tokens", "ZooError", "build_encoder", "register_encoder"]
