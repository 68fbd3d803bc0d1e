"""What every action runs on: building the configured model, checkpoint files, process groups
and the torchrun launch line, and the image transforms."""
