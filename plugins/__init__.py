"""Dataset-format plugins shipped with clipcore: ``custom`` (image and caption folders or tar
archives) and ``wds`` (WebDataset shards)."""
