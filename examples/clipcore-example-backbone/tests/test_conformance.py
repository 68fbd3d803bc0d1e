from core.testing import PluginConformance


class TestExampleBackbone(PluginConformance):
    plugin = "example_backbone"
