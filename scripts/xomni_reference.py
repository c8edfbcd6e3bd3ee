"""The reference that tests/test_xomni_lm.py holds gvu's own X-Omni code to: the tiny X-Omni of
tests/_tiny_xomni.py (X-Omni's conventions, name-seeded weights) run through ITS OWN modelling code under the
transformers X-Omni pins (4.51.3), logits in both generation modes for a fixed left-padded batch.

    # 1. in gvu's environment: write the tiny checkpoint
    python scripts/xomni_reference.py write /tmp/tiny-xomni
    # 2. in an environment with X-Omni's pin (torch, transformers==4.51.3, pillow; gvu is not needed)
    python -m venv /tmp/tf451 && /tmp/tf451/bin/pip install torch==2.13.0 transformers==4.51.3 pillow
    /tmp/tf451/bin/python scripts/xomni_reference.py compute /tmp/tiny-xomni tests/data/xomni_reference.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def compute(folder: Path, out: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from _tiny_xomni import logits_both_modes, reference_batch

    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, torch_dtype=torch.float32).eval()
    ids, mask, pos = reference_batch(folder)
    ref = {"transformers": transformers.__version__, "torch": torch.__version__, "code": type(lm).__module__,
           "rope_theta": lm.config.rope_theta, "input_ids": ids.tolist(), "attention_mask": mask.tolist(), **logits_both_modes(lm, ids, mask, pos)}
    out.write_text(json.dumps(ref) + "\n")
    print(f"wrote {out}: transformers {transformers.__version__}, {type(lm).__module__}.{type(lm).__name__}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    if len(sys.argv) >= 3 and sys.argv[1] == "write":
        from _tiny_xomni import write_tiny_xomni
        print(write_tiny_xomni(Path(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "compute":
        compute(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
