"""effzoo's built-in plugins. Each module is an entry point of effzoo's distribution (setup.cfg,
group ``effzoo``: the one list of built-ins) and registers through the same ``effzoo_register`` hook,
using only the public API :mod:`effzoo.plugin`, exactly as third-party plugins do. ``common`` and
``feature_detection`` are shared helpers that third-party plugins may import too."""
