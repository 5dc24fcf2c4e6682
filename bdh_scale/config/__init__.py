"""The run's configuration: a YAML recipe with dotted overrides, read into typed sections.

    sections.py       the train and tracking sections, and RunConfig (all four, and the rules between them)
    recipe.py         reading a recipe and overrides (bounded: utils/bounded.py), load_config
    cli.py            the config on the command line: --help listing, --section.key flags, --print-config
    source_model.py   train.init_from: the model fields a recipe leaves out are its source's

The model and data sections live with their code (model/config.py, data/config.py).
"""
from bdh_scale.config.recipe import config_from_dict, load_config, parse_overrides, read_recipe
from bdh_scale.config.sections import MAX_RUN_NAME, RunConfig, TrackingConfig, TrainConfig

__all__ = ["MAX_RUN_NAME", "RunConfig", "TrackingConfig", "TrainConfig", "config_from_dict", "load_config",
           "parse_overrides", "read_recipe"]
