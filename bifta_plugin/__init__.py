"""BiFTA / WCA zero-shot classification with CLIP, for FiftyOne.

The core (config, boxes, scoring, text, views, pipeline, encoders) imports
torch but never FiftyOne; the FiftyOne layer is imported lazily.
"""

__version__ = "0.1.0"
