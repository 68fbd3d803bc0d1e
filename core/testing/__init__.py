"""The conformance kit: the checks a clipcore plugin must pass, for third parties to run.

In your plugin package's tests (pytest), five lines::

    from core.testing import PluginConformance

    class TestMyPlugin(PluginConformance):
        plugin = "my_plugin"          # your entry-point name in the clipcore.plugins group

Every check applicable to what the plugin registers runs as its own test
(``test_conformance[<entry>-<check>]``, so ``-k`` selects one). ``expected_failures = {"check":
"reason"}`` turns known failures into xfails. From a shell: ``core plugins check my_plugin``.
Install with the ``clipcore[testing]`` extra. Renaming checks is a breaking change of the kit.
"""

from core.testing.kit import Check, CheckFailure, PluginConformance, checks_for, run_checks

__all__ = ["Check", "CheckFailure", "PluginConformance", "checks_for", "run_checks"]
