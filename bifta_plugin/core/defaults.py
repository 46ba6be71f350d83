"""Run defaults shared by the SDK, the CLI, the forms and ``BiftaModel``.

Pure Python (no torch), so the forms and the argument parser can read them
without importing the engine. Method hyperparameters are not here: each
method's preset is in :mod:`.methods`.
"""

from __future__ import annotations

#: the method a run uses when none is named
METHOD = "bifta"
#: open_clip model name and pretrained tag of the published numbers
MODEL_NAME = "ViT-B-32"
PRETRAINED = "openai"
#: the Classification field a run writes (and its default run key)
LABEL_FIELD = "bifta"
DEVICE = "auto"
PRECISION = "auto"
BATCH_SIZE = 16
CROP_MODE = "auto"
DESCRIPTIONS_FORMAT = "auto"
#: up to this many classes a run writes one score field per class, else top-k
MAX_CLASS_FIELDS = 100
TOP_K = 5
#: smallest object side (pixels) a patches run classifies; the engine's
#: ``regions.DEFAULT_MIN_SIZE`` (kept here so forms need not import the engine)
PATCH_MIN_SIZE = 8

#: the accepted values of the string options above
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
CROP_MODES = ("auto", "exact", "fast")
DESCRIPTIONS_FORMATS = ("auto", "cupl", "dclip", "templates")
#: ``pretrained`` values (stripped, lower-cased) that mean random weights
RANDOM_PRETRAINED = ("", "none", "random")
