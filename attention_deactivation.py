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
from universal_neurons.flags import add_dataclass


def parse_args(argv=None):
    from universal_neurons.attention_deactivation import AttentionConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(p, AttentionConfig)
    return AttentionConfig.from_args(p.parse_args(argv))


@cli_entry
def main(argv=None):
    print(parse_args(argv).run())


if __name__ == "__main__":
    main()
