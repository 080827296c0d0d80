"""effzoo's built-in plugins. Each module is an entry point of effzoo's distribution (setup.cfg,
group ``effzoo``) and registers through the same ``effzoo_register`` hook as third-party plugins."""

# Mirrors setup.cfg's [options.entry_points] effzoo group; used only when effzoo is not pip-installed.
BUILTINS = {
    "positions": "effzoo_plugins.positions",
    "attention_gqa": "effzoo_plugins.attention_gqa",
    "attention_mla": "effzoo_plugins.attention_mla",
    "attention_nsa": "effzoo_plugins.attention_nsa",
    "feedforward": "effzoo_plugins.feedforward",
    "transformer": "effzoo_plugins.transformer",
    "moe": "effzoo_plugins.moe",
    "mamba": "effzoo_plugins.mamba",
    "rwkv": "effzoo_plugins.rwkv",
    "pythia": "effzoo_plugins.pythia",
}
