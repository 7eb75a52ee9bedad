"""Models: each keeps its parameters in one flat vector and serves
``loss_and_grad`` (see DESIGN.md, "The contract every engine serves")."""


def model_from_config(cfg):
    """Rebuild a model (weights freshly initialized) from its ``config()`` dict."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    if kind == "Sequential":
        from .mlp import Sequential
        return Sequential.from_config(cfg)
    if kind == "CharLSTM":
        from .lstm import CharLSTM
        return CharLSTM.from_config(cfg)
    raise ValueError(f"unknown model type {kind!r}")
