"""The artifact layer's registry: every artifact kind, where it lives, which stage writes it, the one
function that reads it, and the record that keys its runs (runs.py); and every stage's config.

    KINDS[name]     Kind(path, stage, reader, record): `path` and `reader` are "module:function" names
                    in universal_neurons (resolved on use, so importing this module is cheap)
    STAGES[script]  "module:Config[:DEFAULTS]": the stage config (flags.py) behind each script and
                    `universal-neurons` subcommand; stage_config(script, argv) parses its flags
    check_runs(lines)   `universal-neurons done`: for each stage command line, whether its run is
                        finished with these settings (runs.checking), without computing or writing

Consumers (pipeline, neuron dataframe, viewer, notebooks, Slurm grid) find artifacts through these
paths and readers; none rebuilds a layout or lists a folder itself (paths.artifact_names).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import shlex
from dataclasses import dataclass

from . import runs
from .errors import Pending, UserError


@dataclass(frozen=True)
class Kind:
    path: str            # "module:function" giving its location
    stage: str           # the script (or subcommand) that writes it
    reader: str | None   # "module:function": its one reader (None: read by people, e.g. the report)
    record: str | None   # the record file beside it (runs.py), None for derived files rewritten on change


KINDS: dict[str, Kind] = {
    "token_dataset": Kind("paths:token_dataset_path", "make_dataset.py", "token_datasets:load_token_dataset",
                          "dataset_config.json"),
    "zoo_model": Kind("paths:zoo_model_path", "zoo", "models:load_model", "zoo.json"),
    "correlation_summary": Kind("paths:correlation_path", "correlations_fast.py",
                                "correlation_summary:read_correlation_summary", "run.json"),
    "correlation_matrix": Kind("paths:correlation_path", "correlations.py",
                               "correlation_summary:load_correlation_matrix", "run.json"),
    "weight_summaries": Kind("paths:weights_summary_path", "weights.py", "weights:read_weight_summaries", "run.json"),
    "activation_summary": Kind("paths:activation_summary_path", "summary.py", "activation_summary:read_summary",
                               "run.json"),
    "activation_cache": Kind("paths:activation_cache_path", "activations.py", "activation_cache:read_cache",
                             "activation_config.json"),
    "neuron_df": Kind("paths:neuron_df_path", "neuron-df", "neuron_df:load_neuron_df", "<model>.run.json"),
    "universal_neurons": Kind("paths:interpretable_neurons_path", "neuron-df", "neuron_df:load_universal",
                              "<model>.run.json"),
    "explanation": Kind("paths:explanation_path", "explain.py", "explanations:read_layer", "explain_config.json"),
    "intervention_run": Kind("paths:intervention_path", "intervention.py", "interventions:load_run", "meta.json"),
    "entropy_summary": Kind("interventions:summary_path", "entropy_intervention.py", "interventions:read_summary", None),
    "attention_deactivation": Kind("paths:attention_deactivation_path", "attention_deactivation.py",
                                   "attention_deactivation:read_run", "meta.json"),
    "report": Kind("paths:report_path", "run", None, None),
}

STAGES: dict[str, str] = {
    "make_dataset.py": "token_datasets:MakeDatasetConfig",
    "correlations_fast.py": "correlations:CorrelationConfig:FAST_DEFAULTS",
    "correlations.py": "correlations:CorrelationConfig:FULL_DEFAULTS",
    "weights.py": "weights:WeightsConfig",
    "summary.py": "activation_summary:SummaryConfig",
    "activations.py": "activation_cache:ActivationsConfig",
    "explain.py": "explanations:ExplainConfig",
    "intervention.py": "interventions:InterventionConfig",
    "entropy_intervention.py": "interventions:EntropyConfig",
    "attention_deactivation.py": "attention_deactivation:AttentionConfig",
    "zoo": "zoo:ZooConfig",
    "neuron-df": "neuron_df:NeuronDfConfig",
    "view": "viewer:ViewConfig",
    "run": "pipeline:PipelineConfig",
}


def resolve(name: str):
    """'module:attribute' of universal_neurons -> the object."""
    module, attr = name.split(":")[:2]
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def path(kind: str, *args, **kwargs):
    return resolve(KINDS[kind].path)(*args, **kwargs)


def reader(kind: str):
    r = KINDS[kind].reader
    if r is None:
        raise UserError(f"artifact kind {kind!r} has no reader (it is for people: open {KINDS[kind].path})")
    return resolve(r)


def read(kind: str, *args, **kwargs):
    """Read an artifact through its one reader, e.g. read('activation_summary', model, dataset)."""
    return reader(kind)(*args, **kwargs)


def stage_config(script: str, argv: list[str]):
    """The typed config of `script` (a name in STAGES) from its command-line flags, as the script parses them."""
    from .flags import add_dataclass

    if script not in STAGES:
        raise UserError(f"unknown stage {script!r}; stages: {', '.join(STAGES)}")
    module, cls_name, *defaults = STAGES[script].split(":")
    cls = resolve(f"{module}:{cls_name}")
    parser = argparse.ArgumentParser(prog=script, exit_on_error=False)
    add_dataclass(parser, cls, resolve(f"{module}:{defaults[0]}") if defaults else None)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parser.parse_args(argv)
    except argparse.ArgumentError as e:
        raise UserError(f"{script}: {e}") from None
    except SystemExit:  # argparse printed "<script>: error: ..." (or --help)
        lines = err.getvalue().strip().splitlines()
        raise UserError(lines[-1] if lines else f"{script}: cannot parse {argv}") from None
    return cls.from_args(ns)


def check(script: str, argv: list[str]) -> tuple[str, str]:
    """('done' | 'todo' | 'stale' | 'error', why) for one stage run, decided without computing or writing."""
    from .errors import _DEFERRED

    _DEFERRED.clear()
    status, why = "done", ""
    try:
        if script == "view":
            raise UserError("view serves pages; it has no run to check")
        config = stage_config(script, argv)
        with runs.checking(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            config.run()
    except Pending as e:
        status, why = "todo", str(e)
    except UserError as e:
        status, why = ("stale" if "pass --overwrite" in str(e) else "error"), str(e)
    except Exception as e:  # a broken artifact or input: said here, before anything is submitted
        status, why = "error", f"{script}: {type(e).__name__}: {e}"
    if _DEFERRED and status != "stale":  # work noted "as if done" comes first (an error after it followed from it)
        status, why = "todo", _DEFERRED[0]
    _DEFERRED.clear()
    return status, why


def check_runs(lines: list[str]) -> list[str]:
    """`universal-neurons done`: one answer line per stage command line ('<script> <flags...>' in shell
    quoting, # comments allowed, or its words joined by the unit separator \\x1f; a blank or comment line
    answers 'skip'), in order: 'done', 'todo <what>', 'stale <why>'
    or 'error <why>'. Models that several checks load are loaded once (runs.memo)."""
    out = []
    with runs.checking():
        for line in lines:
            try:  # fields split by \x1f (what the Slurm grid sends: any character survives), else shell words
                words = [w for w in line.split("\x1f") if w] if "\x1f" in line else shlex.split(line, comments=True)
            except ValueError as e:
                out.append(f"error cannot read {line!r}: {e}")
                continue
            if not words:
                out.append("skip")
                continue
            status, why = check(words[0], words[1:])
            out.append(f"{status} {' '.join(why.split())}".rstrip())
    return out
