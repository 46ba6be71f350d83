"""The BiFTA models as a remote FiftyOne zoo model source.

FiftyOne imports this file on its own (not as part of a package) from the
copy of this folder it keeps under ``fo.config.model_zoo_dir``, so it only
hands over to the installed ``bifta_plugin`` package
(:mod:`bifta_plugin.sdk.zoo`)::

    import fiftyone.zoo as foz

    foz.register_zoo_model_source("https://github.com/<owner>/<repo>")
    model = foz.load_zoo_model(
        "bifta-open-clip-torch", classes=["cat", "dog"], descriptions="pets.json"
    )
    dataset.apply_model(model, label_field=model.label_fields("bifta"))
"""


def _zoo():
    try:
        from bifta_plugin.sdk import zoo
    except ImportError as e:
        raise ImportError(
            "the BiFTA zoo models need the bifta_plugin package in this Python "
            "environment: pip install the repository that holds this zoo "
            f"source ({e})"
        ) from e
    return zoo


def download_model(model_name, model_path):
    """Prepares ``model_path`` (see :func:`bifta_plugin.sdk.zoo.download_model`)."""
    _zoo().download_model(model_name, model_path)


def load_model(model_name, model_path, **kwargs):
    """A :class:`bifta_plugin.sdk.model.BiftaModel` (see
    :func:`bifta_plugin.sdk.zoo.load_model`)."""
    return _zoo().load_model(model_name, model_path, **kwargs)
