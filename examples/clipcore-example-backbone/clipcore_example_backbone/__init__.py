"""An example third-party clipcore backbone plugin (model type ``example-tiny``)."""
