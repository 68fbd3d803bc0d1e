"""The ``core`` command line (:mod:`.main`) and one thin module per command."""
