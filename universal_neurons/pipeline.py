"""The main job (`universal-neurons run`): every stage of the paper for seed a of a set of seeds.

    zoo           train the toy seeds (embedded default only)                  zoo.py
    datasets      the corpus per subset + a held-out mix (make_dataset.py)     token_datasets.py
    correlations  seed a against every other seed, none + rotation, one pass   correlations.py
    weights       weight summaries of seed a (weights.py)                      weights.py
    summaries     activation summaries of seed a per subset (summary.py)       activation_summary.py
    neuron_df     the neuron dataframe and universal.csv                       neuron_df.py
    explanations  token-feature variance reduction of the universal neurons    explanations.py
    intervention  entropy-neuron style: fix the best candidate to a range of
                  values, against random last-layer neurons                    interventions.py
    attention     BOS-signal neurons of the head that attends most to BOS      attention_deactivation.py
    report        figures and reports/<model>/report.md                        report.py
Every stage skips work whose artifacts exist, so a rerun only rebuilds the report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from . import paths, token_datasets, zoo
from .models import load_model, load_tokenizer, model_family
from .errors import UserError
from .flags import StageConfig
from .neuron_df import UNIVERSAL_THRESHOLD, entropy_candidate, select_universal  # noqa: F401 (one definition)

PAPER_VALUES = [-0.17, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # the paper's fixed values for GPT-2 entropy neurons


@dataclass(kw_only=True)
class PipelineConfig(StageConfig):
    """`universal-neurons run`'s flags; `run()` runs every stage (see the module docstring)."""

    models: list[str] | None = field(default=None, metadata={"nargs": "+", "help":
                                     "seed a first, then the others (default: toy-gpt2-a .. e; --quick: "
                                     "toy-gpt2-tiny-a .. e)"})
    family: str | None = field(default=None, metadata={"help":
                               "instead of --models: a seed family (stanford-gpt2-small, stanford-gpt2-medium, "
                               "pythia-14m .. pythia-410m (PolyPythias: seed 0 and seed1..9), toy-gpt2, toy-gpt2-tiny) "
                               "or a folder of model folders, one per seed; its first seed against the others"})
    n_seeds: int | None = field(default=None, metadata={"type": int, "help":
                                "with --family: only its first N seeds (e.g. 4 of PolyPythias' 10)"})
    dataset: str = field(default="python-stdlib", metadata={"help":
                         "corpus given to make_dataset.py (default the built-in one); the correlations use its "
                         "all-<N> mix, the summaries each subset"})
    corr_dataset: str | None = field(default=None, metadata={"help":
                                     "use this existing token dataset for correlations instead"})
    summary_datasets: list[str] | None = field(default=None, metadata={"nargs": "*", "help":
                                               "existing token datasets to summarise instead"})
    quick: bool = field(default=False, metadata={"action": "store_true", "help":
                        "tiny zoo and small datasets (CI, smoke tests)"})
    preset: str | None = field(default=None, metadata={"help":
                               "the zoo preset to run when --models and --family are not given: default, tiny "
                               "(= --quick's zoo) or deep (3 layers, d_model 256: the paper's prediction neurons; "
                               "a one-time build of about an hour on 2 cores, correlation mix 250k)"})
    device: str = field(default="cpu", metadata={"common": True})  # the embedded default runs on the CPU
    batch_size: int = field(default=32, metadata={"common": True})
    overwrite: bool = field(default=False, metadata={"common": True})
    threshold: float = field(default=UNIVERSAL_THRESHOLD, metadata={"type": float, "help":
                             "excess_corr above which a neuron is universal"})
    ctx_len: int | None = field(default=None, metadata={"type": int, "help":
                                "context of the token datasets (default: the zoo's, or 512)"})
    mix_tokens: str | None = field(default=None, metadata={"help": "size of the correlation mix (default 1m; --quick 32k; --preset deep 250k)"})
    skip: list[str] = field(default_factory=list, metadata={"nargs": "*", "help":
                            "stages to skip (explanations intervention attention ...)"})
    exclude_special_tokens: bool = field(default=False, metadata={"action": "store_true", "help":
                                         "leave BOS/EOS/padding positions out of the summaries and explanations "
                                         "(default: count every position, as the original)"})
    drop_newlines: str = field(default="single", metadata={"choices": ["single", "all", "none"], "help":
                               "correlations: leave out the one-token newline (single, the original's), every "
                               "newline-only token (all) or none"})

    def __post_init__(self):
        super().__post_init__()
        if self.ctx_len is not None and self.ctx_len < 2:
            raise UserError(f"--ctx_len must be >= 2 (BOS and one token), got {self.ctx_len}")
        if self.family is not None and self.models:
            raise UserError("give --models or --family, not both")
        if self.n_seeds is not None and self.family is None:
            raise UserError("--n_seeds goes with --family")
        if self.family is not None:
            from .models import family_members

            self.models = family_members(self.family, self.n_seeds)
        if self.preset is not None:
            zoo.get_preset(self.preset)  # an unknown preset is one clear error
            if self.models is not None:
                raise UserError("give --preset or --models / --family, not both")
            if self.quick and self.preset != "tiny":
                raise UserError(f"--quick runs the tiny preset; drop --quick to run --preset {self.preset}")
        if self.models is not None and len(self.models) < 2:
            raise UserError(f"--models needs seed a and at least one other seed, got {self.models}")

    def run(self) -> Path:
        return run(self)


def settings(args) -> SimpleNamespace:
    preset = args.preset or ("tiny" if args.quick else "default")
    models = args.models or [zoo.zoo_name(preset, s) for s in range(5)]
    toy = all(zoo.is_zoo_name(m) for m in models)
    ctx = args.ctx_len if args.ctx_len is not None else (zoo.get_preset(zoo.parse_zoo_name(models[0])[0]).ctx_len if toy else 512)
    if args.mix_tokens:
        mix = token_datasets.parse_count(args.mix_tokens)
    elif args.quick:
        mix = 32_000
    else:  # a zoo preset may set its own (deep: 250k, so the 3072 neurons' correlations stay within the hour)
        mix = zoo.RUN_MIX_TOKENS.get(zoo.parse_zoo_name(models[0])[0], 10 ** 6) if toy else 10 ** 6
    prefix = token_datasets.dataset_prefix(args.dataset)  # the names make_dataset.py gives this corpus's datasets
    return SimpleNamespace(
        preset=preset, models=models, a=models[0], others=models[1:], toy=toy, ctx_len=ctx,
        family=model_family(models[0]), mix_tokens=mix, n_seq=400 if args.quick else -1,
        prefix=prefix, mix_name=args.corr_dataset or f"{prefix}.all-{token_datasets.format_count(mix)}.{ctx}",
        n_baselines=2 if args.quick else 10, intervention_rows=64 if args.quick else 256,
        attention_rows=32 if args.quick else 128)


class Stages:
    """Runs named stages in order, timing each, printing a banner, honouring --skip."""

    def __init__(self, skip):
        self.skip, self.timings = set(skip), {}

    def __call__(self, name, fn, *a, **kw):
        if name in self.skip:
            print(f"-- {name}: skipped (--skip)")
            return None
        print(f"-- {name}", flush=True)
        t = time.time()
        out = fn(*a, **kw)
        self.timings[name] = round(time.time() - t, 1)
        return out


def stage_datasets(args, s) -> list[str]:
    """Token datasets: the correlation mix and the per-subset datasets (make_dataset.py)."""
    subsets = args.summary_datasets
    have = token_datasets.available_datasets(s.family)
    local = args.dataset == token_datasets.BUILTIN or Path(args.dataset).is_dir()
    # the built-in corpus and local folders: make_dataset.py's records decide (skip / build / stop);
    # a hub corpus (network) is made once, when its mix is missing
    if args.corr_dataset is None and (local or s.mix_name not in have):
        token_datasets.main_make_dataset(token_datasets.MakeDatasetConfig(
            model=s.a, hf_dataset=args.dataset, ctx_len=s.ctx_len, n_seq=s.n_seq, mix_tokens=[str(s.mix_tokens)],
            overwrite=args.overwrite))
        have = token_datasets.available_datasets(s.family)
    if subsets is None:  # every single-subset dataset of this corpus and context
        subsets = [n for n in have if n.startswith(s.prefix + ".") and n.endswith(f".{s.ctx_len}")
                   and ".all-" not in n]
    for name in [s.mix_name, *subsets]:
        token_datasets.load_token_dataset(name, s.family, load_tokenizer(s.a))  # exists, right tokenizer
    return subsets


def stage_correlations(args, s) -> None:
    from .correlations import CorrelationConfig, run_correlations

    run_correlations(CorrelationConfig(
        model_1_name=s.a, model_2_name=list(s.others), token_dataset=s.mix_name, baseline=["none", "rotation"],
        batch_size=args.batch_size, model_1_device=args.device, model_2_device=args.device,
        correlation_device=args.device, drop_newlines=args.drop_newlines, overwrite=args.overwrite))


def stage_weights(args, s) -> None:
    from .weights import WeightsConfig

    WeightsConfig(model=s.a, device=args.device, force=args.overwrite).run()


def stage_summaries(args, s, subsets) -> None:
    from .activation_summary import SummaryConfig

    SummaryConfig(model=s.a, token_dataset=list(subsets), batch_size=args.batch_size, device=args.device,
                  exclude_special_tokens=args.exclude_special_tokens, overwrite=args.overwrite).run()


def stage_neuron_df(args, s, subsets) -> pd.DataFrame:
    from .neuron_df import NeuronDfConfig

    return NeuronDfConfig(model=s.a, others=list(s.others), dataset=s.mix_name, activation_datasets=list(subsets),
                          threshold=args.threshold, overwrite=args.overwrite).run()


def explained_neurons(df: pd.DataFrame, threshold: float, n_min: int = 20) -> pd.DataFrame:
    """The universal neurons, or (when fewer than n_min pass) the n_min highest excess_corr."""
    return select_universal(df, threshold, n_min)[0]


def stage_explanations(args, s, df) -> pd.DataFrame | None:
    from .heuristic_explanation import load_best_features
    from .explanations import ExplainConfig

    chosen = explained_neurons(df, args.threshold)
    sel = paths.report_path(s.a) / "explained_neurons.csv"
    text = chosen[["layer", "neuron"]].to_csv(index=False)
    if not (sel.is_file() and sel.read_text() == text):  # derived: rewritten only when the selection changes
        with paths.atomic_path(sel) as tmp:
            tmp.write_text(text)
    layers = sorted(chosen["layer"].unique())
    ExplainConfig(model=s.a, dataset=s.mix_name, neuron_df_path=str(sel), batch_size=args.batch_size,
                  device=args.device, min_count=30 if args.quick else 300,
                  exclude_special_tokens=args.exclude_special_tokens,
                  overwrite=args.overwrite).run()  # skips layers explained with these settings
    best = load_best_features(s.a, s.mix_name, "token", [int(l) for l in layers]).reset_index()
    lay_neu = best["neuron"].str.split(".", expand=True).astype(int)
    best["layer"], best["neuron"] = lay_neu[0], lay_neu[1]
    return best


def stage_intervention(args, s, df) -> pd.DataFrame:
    from .interventions import EntropyConfig

    neuron = entropy_candidate(df)
    if s.toy:  # the toy's activations have their own scale: span 0 .. 3x the neuron's typical range
        from .activation_summary import read_summary, summary_datasets

        top = read_summary(s.a, summary_datasets(s.a)[0])["neuron_max_activating_value"]
        l, n = map(int, neuron.split("."))
        vmax = float(torch.nan_to_num(top[l, n].float(), nan=0.0).max())
        values = [round(v, 3) for v in (-0.17, 0.0, vmax / 2, vmax, 2 * vmax, 3 * vmax)]
    else:
        values = PAPER_VALUES
    out = EntropyConfig(model=s.a, token_dataset=s.mix_name, neuron_subset=neuron, values=values,
                        n_random_baselines=s.n_baselines, batch_size=args.batch_size, device=args.device,
                        n_seq=s.intervention_rows, overwrite=args.overwrite).run()
    from .interventions import read_summary

    return read_summary(out["summary"])


@torch.no_grad()
def bos_head(model, tokens: torch.Tensor) -> tuple[int, int]:
    """(layer, head) with the most attention to BOS from later positions, excluding layer 0."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    best, arg = -1.0, (model.cfg.n_layers - 1, 0)
    for l in range(1, model.cfg.n_layers):
        bos = cache[f"blocks.{l}.attn.hook_pattern"][:, :, 1:, 0].mean((0, 2))  # [head]
        h = int(bos.argmax())
        if float(bos[h]) > best:
            best, arg = float(bos[h]), (l, h)
    return arg


def stage_attention(args, s) -> dict | None:
    from .attention_deactivation import AttentionConfig

    model = load_model(s.a, device=args.device)
    if model.cfg.n_layers < 2:
        return None
    ds = token_datasets.load_token_dataset(s.mix_name, s.family, model.tokenizer)
    layer, head = bos_head(model, token_datasets.token_tensor(ds, 0, 16))
    folder = AttentionConfig(model=s.a, token_dataset=s.mix_name, layer=layer, head=head, top_k=5,
                             batch_size=args.batch_size, device=args.device, n_seq=s.attention_rows,
                             overwrite=args.overwrite).run()
    from .attention_deactivation import read_run

    return {"layer": layer, "head": head, "correlations": read_run(folder)["corr_dict"]}


def correlation_partners(s, df: pd.DataFrame) -> pd.DataFrame:
    """For each neuron, its best-correlated neuron 'l.n (r)' in each other seed."""
    from .correlations import read_correlation_summary

    out = df[["layer", "neuron"]].copy()
    for o in s.others:
        summ = read_correlation_summary(paths.correlation_path(s.a, o, s.mix_name, "pearson", "none"))
        d2 = load_model(o).cfg.d_mlp
        ix, val = summ["max_corr_ix"].long().numpy(), summ["max_corr"].float().numpy()
        out[o] = [f"{i // d2}.{i % d2} ({v:.2f})" if i >= 0 else "dead" for i, v in zip(ix, val)]
    return out


def conventions(args) -> list[str]:
    """The report's line on which positions each statistic counted."""
    special = "without" if args.exclude_special_tokens else "with"
    newline = {"single": "the one-token newline", "all": "every newline-only token",
               "none": "no newline token"}[args.drop_newlines]
    return [f"correlations leave out BOS/EOS/padding and {newline} (--drop_newlines {args.drop_newlines})",
            f"summaries and explanations count every position {special} BOS/EOS/padding"
            + (" (--exclude_special_tokens)" if args.exclude_special_tokens else " (the original's)")]


def run(args) -> Path:
    from .report import write_report

    s = settings(args)
    st = Stages(args.skip)
    t0 = time.time()
    print(f"== universal-neurons run: {s.a} against {', '.join(s.others)} ==")
    zoo_table = None
    if s.toy:
        metas = st("zoo", lambda: zoo.ensure_models(s.models))
        zoo_table = zoo.format_zoo_table(metas)
        print(zoo_table)
    subsets = st("datasets", stage_datasets, args, s)
    st("correlations", stage_correlations, args, s)
    st("weights", stage_weights, args, s)
    st("summaries", stage_summaries, args, s, subsets)
    df = st("neuron_df", stage_neuron_df, args, s, subsets)
    explanations = st("explanations", stage_explanations, args, s, df)
    intervention = st("intervention", stage_intervention, args, s, df)
    attention = st("attention", stage_attention, args, s)
    st.timings["total"] = round(time.time() - t0, 1)
    report = st("report", write_report, s.a, df, others=s.others, dataset=s.mix_name, toy=s.toy,
                zoo_table=zoo_table, partners=correlation_partners(s, df), explanations=explanations,
                intervention=intervention, attention=attention, timings=st.timings, threshold=args.threshold,
                conventions=conventions(args))
    print(Path(report).read_text().split("## How universal")[0])
    print(f"report: {report}")
    return Path(report)
