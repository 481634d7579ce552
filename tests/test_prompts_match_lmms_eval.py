"""Our prompts are the ones lmms-eval's stock chat model classes send for each family, and for
LLaVA-1.5 and LLaVA-NeXT the stock `llava_hf` class itself builds the same processor outputs.

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


class _Recorder:
    """Stands in for the HF model inside lmms-eval's stock class: records what `generate` receives
    and answers one token, so the test sees the exact processor outputs the stock class builds."""

    def __init__(self, hf):
        self.hf, self.inputs = hf, None

    def __getattr__(self, name):
        return getattr(self.hf, name)

    def generate(self, **kwargs):
        import torch

        self.inputs = kwargs
        ids = kwargs["input_ids"]
        return torch.cat([ids, ids[:, -1:]], dim=1)


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
@pytest.mark.parametrize("size", [(120, 90), (64, 160)])
def test_stock_llava_hf_builds_the_inputs_we_build(tiny_models, name, size, tmp_path):
    """lmms-eval's own `llava_hf` chat class, loaded from the tiny checkpoint on disk, answers one
    request; its input_ids, pixel values and image sizes equal ours exactly. (`qwen2_5_vl` and
    `internvl_hf` cannot be built here: their processors need torchvision, which the CPU install
    leaves out; their prompts are checked above.)"""
    import torch
    from lmms_eval.api.instance import Instance
    from lmms_eval.models.chat.llava_hf import LlavaHf

    model = tiny_models[name]["sdpa"]
    model.hf.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    stock = LlavaHf(pretrained=str(tmp_path), device="cpu", device_map="cpu", dtype="float32",
                    attn_implementation="sdpa")
    stock._model = recorder = _Recorder(stock._model)
    image = make_image(0, size)

    def doc_to_messages(doc):
        return [{"role": "user", "content": [{"type": "image", "url": doc["image"]},
                                             {"type": "text", "text": QUESTION}]}]

    stock.task_dict = {"task": {"test": {0: {"image": image}}}}
    request = Instance(request_type="generate_until", arguments=("", doc_to_messages, {"max_new_tokens": 1}, 0,
                                                                "task", "test"), idx=0,
                       metadata={"task": "task", "doc_id": 0, "repeats": 1})
    stock.generate_until([request])
    ours, theirs = model.prepare([image], QUESTION).inputs, recorder.inputs
    assert torch.equal(theirs["input_ids"], ours["input_ids"])
    assert torch.equal(theirs["pixel_values"], ours["pixel_values"])
    if "image_sizes" in ours:
        assert torch.equal(torch.as_tensor(theirs["image_sizes"]), ours["image_sizes"])
