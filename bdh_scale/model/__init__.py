"""Models: BDH (the subject), a GPT-2-style baseline and the BDH-HRM hybrid, all returning
ModelOutput and registered by name in registry.py (`model.arch` of a recipe)."""
from bdh_scale.model.attention import BDHState
from bdh_scale.model.bdh import BDH
from bdh_scale.model.config import BDHConfig
from bdh_scale.model.output import ModelOutput
from bdh_scale.model.registry import ARCHS, build_model, load_pretrained

__all__ = ["ARCHS", "BDH", "BDHConfig", "BDHState", "ModelOutput", "build_model", "load_pretrained"]
