"""Networks: plain ``nn.Module``s built from explicit arguments; Hydra's ``_target_`` names them."""
