"""Modality encoders. Importing this package registers every built-in encoder type."""
from encoders.base import (ENCODERS, ContractError, Encoder, Features, InputError, Tokens, TypeRegistry, ZooError,
                           build_encoder, register_encoder)
from encoders import composition, crystal, image, mass, molecule, spectrum, text  # noqa: F401  (registers every encoder type)

__all__ = ["ENCODERS", "ContractError", "Encoder", "Features", "InputError", "Tokens", "TypeRegistry", "ZooError",
           "build_encoder", "register_encoder"]
