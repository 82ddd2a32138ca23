"""Models: encoder registry (pretrainedmodels, timm), UNet decoder with scSE, hypercolumn, heads."""

from salt_exp.models.encoders import Encoder, build_encoder, encoder_names, list_encoders
from salt_exp.models.unet import SaltNet, SaltOutput, build_model

__all__ = ["Encoder", "SaltNet", "SaltOutput", "build_encoder", "build_model", "encoder_names", "list_encoders"]
