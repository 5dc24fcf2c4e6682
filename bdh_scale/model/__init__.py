"""Models: BDH (the subject), a GPT-2-style baseline and the BDH-HRM hybrid, all returning
ModelOutput and registered by name in registry.py (`model.arch` of a recipe); load.py loads any of
them from a model directory or the Hub."""
from bdh_scale.model.bdh.attention import BDHState
from bdh_scale.model.bdh.bdh import BDH
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.load import load_pretrained
from bdh_scale.model.output import ModelOutput
from bdh_scale.model.registry import ARCHS, build_model

__all__ = ["ARCHS", "BDH", "ModelConfig", "BDHState", "ModelOutput", "build_model", "load_pretrained"]
