"""Look at one neuron in a notebook, as the original summary_viewer.py:

    from summary_viewer import *
    display_summary("toy-gpt2-a", layer=1, neuron=17)

The loaders and the per-panel figure functions live in universal_neurons/viewer_data.py.
As a script it serves the same panels in the browser (universal_neurons/viewer.py):

    python summary_viewer.py --model toy-gpt2-tiny-a [--port 8000] [--host 127.0.0.1]

It binds 127.0.0.1 only, unless --host names another interface explicitly.
"""
import argparse

from universal_neurons.errors import cli_entry

from universal_neurons.viewer_data import (activation_percentiles, display_summary, examples_html,  # noqa: F401
                                           get_tokenizer_and_decoded_vocab, histogram_stairs, load_all_summaries,
                                           load_dataset_summary, load_weights_summary, max_activating_examples,
                                           panel_activation_distribution, panel_activation_percentiles,
                                           panel_attention_composition, panel_max_activating_examples, panel_note,
                                           panel_top_neurons, panel_top_tokens, panel_top_vocab_tokens,
                                           panel_weight_cosine_distributions, short_names, summary_datasets,
                                           top_tokens)

__all__ = ["load_dataset_summary", "load_all_summaries", "load_weights_summary", "get_tokenizer_and_decoded_vocab",
           "display_summary", "summary_datasets", "short_names", "top_tokens", "max_activating_examples",
           "activation_percentiles", "histogram_stairs", "examples_html", "panel_note",
           "panel_activation_percentiles", "panel_activation_distribution", "panel_top_tokens",
           "panel_weight_cosine_distributions", "panel_top_vocab_tokens", "panel_top_neurons",
           "panel_attention_composition", "panel_max_activating_examples"]


@cli_entry
def main(argv=None):
    from universal_neurons.flags import add_dataclass
    from universal_neurons.viewer import ViewConfig

    p = argparse.ArgumentParser(description="The neuron viewer in the browser, over the artifacts of the working directory.")
    add_dataclass(p, ViewConfig)
    ViewConfig.from_args(p.parse_args(argv)).run()


if __name__ == "__main__":
    main()
