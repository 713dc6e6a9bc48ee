"""Vision experiments: offline image datasets (:mod:`.datasets`) and a compact ViT (:mod:`.vit`)."""
