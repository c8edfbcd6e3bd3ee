"""The built-in unified model of the shapes world and its pretraining: the model (model.py), its word-level
tokenizer, its 2-D reader of understanding images (grid.py), and `gvu pretrain` (pretrain.py, with the scenes it
draws in pretrain_data.py and the resumable state in pretrain_state.py).

What it may import: the model contract, the top-level modules of gvu.models (protocol, sampling, forward, hf,
shared_vocab), and the layers below models (world, eval, datafile, argcheck). Never the adapters
(gvu.models.adapters) nor the spec loader (gvu.models.load), which sits above both rooms; tests/test_layers.py
checks it."""
