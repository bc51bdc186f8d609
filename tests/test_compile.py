"""``compile=true``: the decoder runs through torch.compile during training only, with the same numbers."""

import torch

from prefalign.trainer import compiled_decoder
from tests.conftest import tiny_model


def test_compiled_decoder_same_logits_and_undone_after():
    model = tiny_model("llama")
    decoder = model.get_decoder()
    input_ids = torch.randint(5, 100, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
    calls = []

    def backend(graph, example_inputs):  # counts the graphs dynamo hands over, runs them as they are
        calls.append(graph)
        return graph.forward

    with compiled_decoder(model, True, backend=backend):
        assert "forward" in vars(decoder)
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits
    assert calls, "the decoder did not go through torch.compile"
    assert "forward" not in vars(decoder)  # eager again: the class's forward
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_disabled_leaves_the_model_alone():
    model = tiny_model("llama")
    with compiled_decoder(model, False):
        assert "forward" not in vars(model.get_decoder())
