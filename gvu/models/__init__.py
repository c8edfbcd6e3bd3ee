"""Models: the contract at the top of this folder, and two rooms in sub-folders built on it. At the top: the
contract every model is driven through and its shared plumbing (protocol, sampling, forward, hf, shared_vocab), and
the spec loader (load) that names each kind's loader. In sub-folders: builtin/ (the shapes-world model and its
pretraining) and adapters/ (real transformers models).

The rooms import the contract, never each other nor the loader; the contract never imports a room; the loader is
the one module that imports both rooms (docs/design.md, "The layers"; tests/test_layers.py checks it)."""
