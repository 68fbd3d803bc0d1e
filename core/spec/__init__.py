"""The experiment spec (``clip.toml``): the schema as attrs classes (:mod:`.config`), loading and
overrides (:mod:`.load`), cross-field rules per action (:mod:`.rules`), rendering (:mod:`.render`),
schema queries (:mod:`.schema`) and TAO YAML conversion (:mod:`.tao`)."""

from core.spec.load import (ACTIONS, TAO_ACTIONS, LoadedSpec, action_dir, check, configured_actions, convert_tao_spec, get_spec,
                            load_config, load_spec, write_spec_file)

__all__ = ["ACTIONS", "TAO_ACTIONS", "LoadedSpec", "action_dir", "check", "configured_actions", "convert_tao_spec",
           "get_spec", "load_config", "load_spec", "write_spec_file"]
