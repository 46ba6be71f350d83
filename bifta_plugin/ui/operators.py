"""Operators of the ``@bifta/bifta`` plugin: thin shells over the SDK.

- ``run_bifta`` wraps :func:`bifta_plugin.sdk.run.iter_bifta`; its param
  names are the SDK's keyword and option-group attribute names, so every
  form has an equivalent SDK call;
- ``get_bifta_run_info`` / ``delete_bifta_run`` wrap
  :mod:`bifta_plugin.runs`.

The form is built in :mod:`.run_form`, executed by :mod:`.run_execution`.
This module imports FiftyOne and :mod:`bifta_plugin.config` (stdlib only),
never torch: the engine is imported inside ``execute``.
"""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..core import defaults
from ..sdk.options import EncoderSpec, OutputSpec, RunOptions, flatten_options
from . import _common as ui
from . import run_execution
from .classes_form import classes_source
from .params import CONFIG_OPTIONS
from .run_form import run_bifta_inputs

ICON = ui.ICON


# ============================================================================
# run_bifta
# ============================================================================
class RunBifta(foo.Operator):
    """Zero-shot classification of the target samples with BiFTA / WCA."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="run_bifta",
            label="BiFTA: zero-shot classify",
            description=(
                "Zero-shot CLIP classification with crops and class "
                "descriptions (BiFTA / WCA)"
            ),
            icon=ICON,
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(
                label="BiFTA zero-shot classify", icon=ICON, prompt=True
            ),
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_bifta_inputs(ctx, inputs)
        return types.Property(
            inputs, view=types.View(label="BiFTA zero-shot classification")
        )

    def resolve_run_name(self, ctx):
        method = ctx.params.get("method") or defaults.METHOD
        label_field = ctx.params.get("label_field") or defaults.LABEL_FIELD
        return f"BiFTA ({method}) -> {label_field}"

    def execute(self, ctx):
        return run_execution.execute(ctx)

    def resolve_output(self, ctx):
        return run_execution.summary_outputs(ctx.results or {})

    def __call__(
        self,
        sample_collection,
        classes=None,
        descriptions_path=None,
        method=defaults.METHOD,
        *,
        encoder: EncoderSpec = EncoderSpec(),
        runtime: RunOptions = RunOptions(),
        output: OutputSpec = OutputSpec(),
        classes_path=None,
        classes_field=None,
        descriptions_format=defaults.DESCRIPTIONS_FORMAT,
        overwrite=False,
        generate_missing=False,
        llm_base_url=None,
        llm_model=None,
        llm_samples_per_prompt=None,
        llm_temperature=None,
        llm_prompt_context=None,
        delegate=False,
        delegation_target=None,
        **config_overrides,
    ):
        """Run the operator from Python (immediately, or queued for delegation).

        The option groups of :func:`bifta_plugin.sdk.run.run_bifta`, which
        is the primary SDK entry point (no operator timeout, returns a
        ``RunResult``); this wrapper exists to *queue* runs for a delegated
        orchestrator from Python, or to run exactly what the App runs.

        Example::

            import fiftyone.operators as foo
            from bifta_plugin.sdk.options import OutputSpec

            op = foo.get_operator("@bifta/bifta/run_bifta")

            # immediately (inside FIFTYONE_OPERATOR_TIMEOUT, 600 s default)
            res = op(dataset, classes=["cat", "dog"],
                     descriptions_path="/path/descriptions.json",
                     output=OutputSpec(gt_field="ground_truth"))
            print(res.result["accuracy"])

            # queued; run with `fiftyone delegated launch`
            res = op(dataset.take(1000), classes_field="ground_truth",
                     method="wca", delegate=True)
            print(res.result["id"])

        Args:
            sample_collection: a dataset or view to classify.
            classes: class names (list, or a comma-separated string); or use
                ``classes_path`` / ``classes_field``.
            descriptions_path: a descriptions file (JSON/YAML/txt); the
                description methods refuse to run without one.
            method: "bifta", "wca", "descriptions", "ensemble" or "clip".
            encoder, runtime, output: the option groups
                (:mod:`bifta_plugin.sdk.options`), as for ``run_bifta``;
                the run happens in another context, so ``encoder`` cannot
                carry an ``instance`` or ``cache_dir`` (``model_config``
                files must be readable where the run happens).
            classes_path: a class list file (txt, one per line, or a JSON or
                YAML list).
            classes_field: use the labels of this Classification field
                (over the whole dataset, as the SDK).
            descriptions_format: "auto", "cupl", "dclip" or "templates".
            overwrite: see ``run_bifta``.
            generate_missing: first ask an OpenAI-compatible LLM for
                descriptions of the classes ``descriptions_path`` (a
                ``.json`` file, created if missing) lacks, and save them to
                it (:func:`bifta_plugin.descriptions.generation.generate_descriptions`);
                the API key comes from the ``BIFTA_LLM_API_KEY`` secret /
                environment variable only.
            llm_base_url, llm_model, llm_samples_per_prompt,
                llm_temperature, llm_prompt_context: the generation
                settings (default: secrets / environment, then
                ``generate_descriptions``' defaults).
            delegate: queue the run for delegated execution.
            delegation_target: an optional orchestrator.
            **config_overrides: method settings such as ``num_candidates``,
                ``max_views``, ``iou_threshold``, ``desc_sim_threshold``,
                ``max_descriptions``, ``seed``; one the method does not read
                is refused.

        Returns:
            a ``fiftyone.operators.executor.ExecutionResult``: ``.result``
            is the run summary dict when run immediately, or the queued
            operation (``.result["id"]``) when delegated.
        """
        unknown = sorted(set(config_overrides) - set(CONFIG_OPTIONS))
        if unknown:
            raise TypeError(f"unknown parameter(s) {unknown}")
        params = dict(
            classes=classes,
            classes_path=classes_path,
            classes_field=classes_field,
            classes_source=classes_source(
                classes, classes_path, classes_field
            ),
            descriptions_path=descriptions_path,
            descriptions_format=descriptions_format,
            method=method,
            **_group_params(encoder, runtime, output),
            overwrite=overwrite,
            generate_missing=generate_missing or None,
            llm_base_url=llm_base_url,
            llm_model=llm_model,
            llm_samples_per_prompt=llm_samples_per_prompt,
            llm_temperature=llm_temperature,
            llm_prompt_context=llm_prompt_context,
            **config_overrides,
        )
        params = {k: v for k, v in params.items() if v is not None}
        for name in ("descriptions_path", "classes_path"):
            if isinstance(params.get(name), os.PathLike):
                params[name] = os.fspath(params[name])
        if isinstance(sample_collection, fo.Dataset):
            ctx = dict(dataset=sample_collection)
        else:
            ctx = dict(view=sample_collection)
        result = foo.execute_operator(
            self.uri,
            ctx,
            params=params,
            request_delegation=delegate,
            delegation_target=delegation_target,
        )
        if not delegate and result.result is None:
            result.result = run_execution.streamed_results(result)
        return result


def _group_params(encoder: EncoderSpec, runtime: RunOptions, output: OutputSpec) -> dict:
    """The option groups as the form's flat params (``model_config``
    files travel as paths: a delegated worker registers them itself)."""
    for name in ("instance", "cache_dir"):
        if getattr(encoder, name) is not None:
            raise ValueError(
                f"EncoderSpec.{name} cannot be passed to the operator (it runs "
                "in another context); use run_bifta"
            )
    params = flatten_options(encoder, runtime, output)
    for name in ("instance", "cache_dir"):
        params.pop(name)
    config = params.pop("model_config")
    if config is not None:
        paths = [config] if isinstance(config, (str, os.PathLike)) else list(config)
        params["model_config"] = [os.path.abspath(os.fspath(p)) for p in paths]
    pretrained = params["pretrained"]
    params["pretrained"] = "none" if pretrained is None else os.fspath(pretrained)
    return params


# ============================================================================
# get_bifta_run_info / delete_bifta_run
# ============================================================================
def _run_key_input(ctx, inputs, action: str) -> str | None:
    """A dropdown of the dataset's BiFTA runs; returns the chosen key."""
    from ..sdk import records as runs

    run_keys = list(runs.list_bifta_runs(ctx.dataset))
    if not run_keys:
        ui.warning(inputs, "no_runs", "This dataset has no BiFTA runs")
        prop = inputs.str("run_key", required=True, label="Run key")
        ui.set_invalid(prop, "This dataset has no BiFTA runs")
        return None
    ui.field_dropdown(
        inputs,
        "run_key",
        run_keys,
        label="BiFTA run",
        description=f"The run to {action}",
        required=True,
    )
    key = ctx.params.get("run_key")
    return key if key in run_keys else None


class GetBiftaRunInfo(foo.Operator):
    """Shows the provenance of a BiFTA run."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="get_bifta_run_info",
            label="BiFTA: get run info",
            description="Show the settings and provenance of a BiFTA run",
            icon=ICON,
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _run_key_input(ctx, inputs, "inspect")
        return types.Property(inputs, view=types.View(label="BiFTA run info"))

    def execute(self, ctx):
        from ..sdk import records as runs
        from ..sdk.summaries import run_summary_markdown

        run_key = ctx.params["run_key"]
        info = runs.get_bifta_run_info(ctx.dataset, run_key)
        return {
            "run_key": run_key,
            "summary_md": run_summary_markdown(info),
            "info": run_execution.jsonable(info),
        }

    def resolve_output(self, ctx):
        """A short table (method, model, classes, samples, accuracy, date,
        duration, fields); the full record stays in the result's ``info``
        (and ``get_bifta_run_info`` in Python)."""
        outputs = types.Object()
        summary = (ctx.results or {}).get("summary_md") or ""
        outputs.md(summary, name="summary_md")
        return types.Property(outputs, view=types.View(label="BiFTA run info"))


class DeleteBiftaRun(foo.Operator):
    """Deletes a BiFTA run and the fields it wrote."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="delete_bifta_run",
            label="BiFTA: delete run",
            description="Delete a BiFTA run and the fields it wrote",
            icon=ICON,
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key = _run_key_input(ctx, inputs, "delete")
        if run_key is not None:
            fields = ui.bifta_run_fields(ctx.dataset, run_key)
            ui.warning(
                inputs,
                "delete_warning",
                f"This deletes run '{run_key}' and its fields: "
                f"{', '.join(fields) or '(none)'}",
            )
        return types.Property(
            inputs, view=types.View(label="Delete BiFTA run")
        )

    def execute(self, ctx):
        from ..sdk import records as runs

        run_key = ctx.params["run_key"]
        deleted = runs.delete_bifta_run(
            ctx.dataset, run_key, delete_fields=True
        )
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        return {"run_key": run_key, "deleted_fields": list(deleted)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("run_key", label="Deleted run")
        outputs.list("deleted_fields", types.String(), label="Deleted fields")
        return types.Property(outputs, view=types.View(label="Deleted"))
