"""Input data: sources (corpora), tokenizers and the Grain pipeline that batches them."""
