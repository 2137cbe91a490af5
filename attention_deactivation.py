"""Path-ablate earlier MLP neurons' direct contributions to one attention head's query and correlate
their activation with the change of the head's attention to BOS and of its output norm.

Writes <results_dir>/attention_deactivation/<model>/<dataset>/<layer>.<head>/ with corr_dict.pt
({"l.n": {"bos_attn": {"pearson", "spearman"}, "norm": {...}}}, over all tokens of all batches),
heuristic_ranking.csv (score = (w_out . W_Q[layer, head]) . k_BOS / sqrt(d_head) for every earlier
neuron), records.pt (per-token activation and changes) and meta.json. Definitions:
universal_neurons/attention_deactivation.py.
"""
from __future__ import annotations

import argparse

from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "--model_name", dest="model", required=True,
                   help="model name (TransformerLens alias, hub id, folder or zoo model)")
    p.add_argument("--token_dataset", required=True, help="token dataset name under $DATASET_DIR/<family>/")
    p.add_argument("--layer", type=int, required=True, help="attention layer")
    p.add_argument("--head", type=int, required=True, help="attention head")
    p.add_argument("--neurons", nargs="+", default=None, help="earlier-layer neurons LAYER.NEURON ...")
    p.add_argument("--top_k", type=int, default=None,
                   help="instead of --neurons: the top K neurons of the heuristic ranking (default 10)")
    p.add_argument("--min_neuron", type=int, default=None,
                   help="with --max_neuron: ranks [min, max) of the heuristic ranking (the original's flags)")
    p.add_argument("--max_neuron", type=int, default=None)
    p.add_argument("--context_length", type=int, default=None,
                   help="use the first N positions of each row (default all; the original used 256)")
    p.add_argument("--after_pos", type=int, default=1,
                   help="first query position recorded (the original used 64 on 256-token rows)")
    p.add_argument("--neuron_chunk", type=int, default=8, help="neurons path-ablated in one forward pass")
    p.add_argument("--output_dir", default=None, help="default $RESULTS_DIR/attention_deactivation")
    add_common(p)
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    from universal_neurons.attention_deactivation import run_attention_deactivation
    from universal_neurons.errors import UserError

    if (args.min_neuron is None) != (args.max_neuron is None):
        raise UserError("--min_neuron and --max_neuron go together")
    ranks = None if args.min_neuron is None else (args.min_neuron, args.max_neuron)

    print(run_attention_deactivation(args.model, args.token_dataset, args.layer, args.head, args.neurons, args.top_k,
                                     args.after_pos, args.batch_size, args.device, args.n_seq, args.neuron_chunk,
                                     args.output_dir, context_length=args.context_length, ranks=ranks,
                                     overwrite=args.overwrite))


if __name__ == "__main__":
    main()
