"""Our prompts are the ones lmms-eval's stock chat model classes send for each family.

The stock classes (`llava_hf`, `internvl_hf`: `ChatMessages.model_dump()`; `qwen2_5_vl`:
`ChatMessages.to_hf_messages()`) render the task's user turn — images first, then the text — with
the processor's chat template. We build the same turn through lmms-eval's own protocol objects and
compare with the prompt `Model.generate` reports.
"""

from __future__ import annotations

import pytest
from lmms_eval.protocol import ChatMessages

from conftest import TINY, make_image

QUESTION = "Is there a red circle?\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("n_images", [1, 2])
def test_prompt_equals_the_stock_lmms_eval_chat_class(tiny_models, name, n_images):
    model = tiny_models[name]["sdpa"]
    images = [make_image(i) for i in range(n_images)]
    content = [{"type": "image", "url": image} for image in images] + [{"type": "text", "text": QUESTION}]
    chat = ChatMessages(messages=[{"role": "user", "content": content}])
    if model.family == "qwen2.5-vl":
        expected = model.processor.apply_chat_template([chat.to_hf_messages()], tokenize=False,
                                                       add_generation_prompt=True)[0]
    else:
        expected = model.processor.apply_chat_template(chat.model_dump()["messages"], tokenize=False,
                                                       add_generation_prompt=True)
    assert model.generate(images, QUESTION, max_new_tokens=1).prompt == expected
