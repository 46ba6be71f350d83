"""FiftyOne App layer: operators and panels (thin shells over the SDK).

Nothing in the library imports this package; only the plugin's root
``__init__.py`` does. Every module here imports FiftyOne but never torch at
import time.
"""
