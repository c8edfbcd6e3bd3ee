"""The adapters' prompts, token for token, against what each model's own processor produces: the reward is only
the method's reward when the judge reads the format its model was trained on."""

from pathlib import Path

import numpy as np
import pytest

from gvu.models.hf import finish_loading
from gvu.models.adapters.emu3 import BOI as EMU_BOI, EOF, EOI as EMU_EOI, EOL, WRAPPER, build_tiny_emu3
from gvu.models.adapters.janus import BOI, EOI, IMAGE, JanusUMM, tiny_janus_parts

INSTRUCTION = "Describe the image in detail."
PROMPT = "a photo of a cat"


def janus_chat_template() -> str:
    text = (Path(__file__).parent / "data" / "janus_chat_template.jinja").read_text()
    return text[text.index("-#}") + 3:].strip("\n")


@pytest.fixture(scope="module")
def janus_parts():
    from transformers.models.janus.processing_janus import JanusProcessor

    lm, tok, ip = tiny_janus_parts(seed=0, chat_template=False)
    tok.image_token, tok.boi_token, tok.eoi_token = IMAGE, BOI, EOI
    # the converted Janus-Pro processors: this chat template, the default system prompt in text mode
    proc = JanusProcessor(image_processor=ip, tokenizer=tok, chat_template=janus_chat_template(),
                          use_default_system_prompt=True, num_image_tokens=16)
    return finish_loading(lm, "cpu", False), tok, ip, proc


@pytest.mark.parametrize("with_template", [True, False], ids=["chat-template", "built-in-format"])
def test_janus_understanding_prompt_is_the_processors(janus_parts, with_template):
    lm, tok, ip, proc = janus_parts
    model = JanusUMM(lm, tok, ip, chat_template=janus_chat_template() if with_template else None)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    want = proc(text=text, images=[np.zeros((16, 16, 3), np.uint8)])["input_ids"][0].tolist()
    ours = model.understanding_prefix(INSTRUCTION)
    assert ours == want
    assert tok.decode(ours).startswith("<bos>You are a helpful language and vision assistant.")  # the system prompt


@pytest.mark.parametrize("with_template", [True, False], ids=["chat-template", "built-in-format"])
def test_janus_generation_prompt_is_the_processors(janus_parts, with_template):
    lm, tok, ip, proc = janus_parts
    model = JanusUMM(lm, tok, ip, chat_template=janus_chat_template() if with_template else None)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
                                    add_generation_prompt=True)
    want = proc(text=text, generation_mode="image")["input_ids"][0].tolist()
    assert model.generation_prefix(PROMPT) == want
    assert tok.decode(want).startswith("<bos><|User|>: ")  # no system prompt for generation


# the official Emu3 processor (baaivision/Emu3, emu3/mllm/processing_emu3.py): its default chat template and the
# image string it builds in understanding mode ('U')
EMU3_CHAT_TEMPLATE = "You are a helpful assistant. USER: {image_prompt}{text_prompt}. ASSISTANT:"


def emu3_official_understanding(tok, codes_RC: np.ndarray, text: str) -> list[int]:
    rows = [("".join(f"<|visual token {int(c):06d}|>" for c in row)) for row in codes_RC]
    image = EMU_BOI + f"{codes_RC.shape[0]}*{codes_RC.shape[1]}" + WRAPPER + EOL.join(rows) + EOL + EOF + EMU_EOI
    prompt = tok.bos_token + EMU3_CHAT_TEMPLATE.format(image_prompt=image, text_prompt=text)
    return tok.encode(prompt, add_special_tokens=False)


def test_emu3_understanding_prompt_is_the_official_processors():
    model = build_tiny_emu3(seed=0, grid=(4, 4))
    codes = np.random.default_rng(0).integers(0, model.layout.num_codes, size=16)
    tok = model.tokenizer.hf
    seq, (a, b) = model.layout.understanding_sequence(codes.tolist(), model.tokenizer.encode(INSTRUCTION),
                                                      model._answer_ids([PROMPT])[0])
    want = emu3_official_understanding(tok, codes.reshape(4, 4), INSTRUCTION)
    assert seq[:a] == want  # everything the answer is scored after
    assert tok.decode(seq[a:b]) == " " + PROMPT
    assert tok.decode(want).endswith(INSTRUCTION + ". ASSISTANT:")


def test_emu3_generation_prompt_is_the_official_processors():
    model = build_tiny_emu3(seed=0, grid=(4, 4))
    tok = model.tokenizer.hf
    want = tok.encode(tok.bos_token + PROMPT + EMU_BOI + "4*4" + WRAPPER, add_special_tokens=False)
    assert model.layout.generation_prefix(model.tokenizer.encode(PROMPT)) == want
