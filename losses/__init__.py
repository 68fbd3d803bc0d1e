"""Built-in contrastive loss plugins (``siglip``, ``clip``) and their distributed primitives."""
