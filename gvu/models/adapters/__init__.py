"""The adapters of real transformers models to the model contract: Janus / Janus-Pro (janus.py), Emu3 (emu3.py),
any shared-vocabulary causal LM described by a gvu_causal_lm.yaml (causal_lm.py), and X-Omni (xomni.py, with its
checkpoint files and vision parts in xomni_files.py and its language model for the installed transformers in
xomni_lm.py).

What it may import: each other, the top-level modules of gvu.models (protocol, sampling, forward, hf,
shared_vocab), and the layers below models (world, eval, datafile, argcheck). Never the built-in model
(gvu.models.builtin) nor the spec loader (gvu.models.load), which sits above both rooms; tests/test_layers.py
checks it."""
