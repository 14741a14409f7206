"""Compatible requests as one pipeline call: each image bit-identical to its request
run alone (CPU, fp32, batch-invariant layers), the UNet called once per step for the
whole batch, and the VAE decoding one image at a time."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from generator.batching import BATCH_INVARIANT_LAYERS, batch_invariant, generate_batch
from generator.errors import InvalidParameterError
from generator.sampling import generate
from tests.generator.conftest import small_params


def requests() -> list:
    """Three compatible requests: their own prompts, negative prompts and seeds, one
    of them with two images."""
    return [
        small_params(prompt="Cardiomegaly.", seed=11, steps=3),
        small_params(
            prompt="No acute disease.",
            seed=5,
            steps=3,
            num_images=2,
            negative_prompt="blurry",
        ),
        small_params(prompt="Left pleural effusion.", seed=90, steps=3),
    ]


class BatchSizes:
    """A forward hook that records the batch size of each call of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.sizes: list[int] = []
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        self.sizes.append(args[0].shape[0])


def arrays(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


def test_it_runs_the_unet_once_per_step_for_the_whole_batch(tiny_pipe_fp32):
    calls = BatchSizes(tiny_pipe_fp32.unet)

    results = generate_batch(tiny_pipe_fp32, requests())

    assert calls.sizes == [2 * 4] * 3  # 4 images, guided: 8 rows, one call per step
    assert [len(result.images) for result in results] == [1, 2, 1]
    assert [result.seeds for result in results] == [[11], [5, 6], [90]]
    assert results[1].prompt.text == "No acute disease."


def test_it_gives_each_image_the_bits_of_its_request_alone(tiny_pipe_fp32):
    pipe = tiny_pipe_fp32
    with batch_invariant(pipe.unet) as switched:
        alone = [generate(pipe, params) for params in requests()]
        batched = generate_batch(pipe, requests())

    assert switched > 0
    for single, in_batch in zip(alone, batched, strict=True):
        for expected, got in zip(arrays(single), arrays(in_batch), strict=True):
            assert np.array_equal(expected, got)


def test_it_gives_the_bits_of_generate_for_a_batch_of_one(tiny_pipe_fp32):
    # Without batch-invariant layers: the batch code path is generate()'s.
    params = small_params(seed=21, num_images=2)

    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            arrays(generate(tiny_pipe_fp32, params)),
            arrays(generate_batch(tiny_pipe_fp32, [params])[0]),
            strict=True,
        )
    )


def test_it_keeps_every_layers_output_per_sample_in_invariant_mode(tiny_pipe_fp32):
    """Per layer: each leaf module's output rows for one request, alone and in a
    batch of three, are the same bits. Without the mode, the test below names the
    layers that move."""
    alone_rows, batch_rows = layer_rows(tiny_pipe_fp32, invariant=True)

    moved = [
        name
        for name, rows in alone_rows.items()
        if not torch.equal(rows, batch_rows[name])
    ]
    assert moved == []
    assert len(alone_rows) > 20  # every leaf layer was compared


def test_it_names_the_layers_whose_bits_depend_on_the_batch(tiny_pipe_fp32):
    """Per layer, same inputs: each leaf module's output rows for one request,
    computed within the batch and on those rows alone. Without the mode this CPU's
    GEMMs move (a record, printed); with it no layer moves."""
    without = layer_moves(tiny_pipe_fp32, invariant=False)
    within = layer_moves(tiny_pipe_fp32, invariant=True)

    print(f"layers whose bits depend on the batch, without the mode: {without}")
    assert within == {}
    # Only the kinds of layer the mode switches move: norms, attention and
    # activations already compute each sample on its own.
    layers = dict(tiny_pipe_fp32.unet.named_modules())
    assert all(isinstance(layers[name], BATCH_INVARIANT_LAYERS) for name in without)


def layer_moves(pipe, *, invariant: bool) -> dict[str, float]:
    """Leaf layers whose output rows for request 0 differ between the batch of
    requests() and those rows run alone through the layer: name -> max difference."""
    batch = [replace_steps(params, 1) for params in requests()]
    total = sum(params.num_images for params in batch)
    rows = [0, total]  # request 0's unguided and guided rows
    moves: dict[str, float] = {}
    handles = []
    for name, module in pipe.unet.named_modules():
        if list(module.children()):
            continue

        def hook(module, args, output, name=name):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) <= total:
                return
            alone = module.forward(x[rows])
            if not torch.equal(alone, output[rows]):
                moves[name] = float((alone - output[rows]).abs().max())

        handles.append(module.register_forward_hook(hook))
    try:
        with batch_invariant(pipe.unet) if invariant else nullcontext():
            generate_batch(pipe, batch)
    finally:
        for handle in handles:
            handle.remove()
    return moves


def layer_rows(pipe, *, invariant: bool) -> tuple[dict, dict]:
    """Each UNet leaf module's first-call output for request 0's rows (its
    unguided and guided row), alone and within the batch of requests()."""
    batch = requests()
    total = sum(params.num_images for params in batch)
    alone = record_first_call(pipe, [batch[0]], invariant, rows=[0, 1])
    together = record_first_call(pipe, batch, invariant, rows=[0, total])
    return alone, together


def record_first_call(pipe, batch, invariant: bool, rows: list[int]) -> dict:
    found: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in pipe.unet.named_modules():
        if list(module.children()):
            continue

        def hook(module, args, output, name=name):
            fresh = name not in found and isinstance(output, torch.Tensor)
            if fresh and output.dim() and output.shape[0] > max(rows):
                found[name] = output[rows].clone()

        handles.append(module.register_forward_hook(hook))
    try:
        if invariant:
            with batch_invariant(pipe.unet):
                generate_batch(pipe, [replace_steps(p, 1) for p in batch])
        else:
            generate_batch(pipe, [replace_steps(p, 1) for p in batch])
    finally:
        for handle in handles:
            handle.remove()
    return found


def replace_steps(params, steps: int):
    from dataclasses import replace

    return replace(params, steps=steps)


def test_it_decodes_one_image_at_a_time(tiny_pipe_fp32):
    decodes = BatchSizes(tiny_pipe_fp32.vae.decoder)

    generate_batch(tiny_pipe_fp32, requests())

    assert decodes.sizes == [1, 1, 1, 1]


def test_it_refuses_requests_that_cannot_share_a_call(tiny_pipe_fp32):
    mixed = [small_params(steps=2), small_params(steps=3, width=96)]

    with pytest.raises(InvalidParameterError) as raised:
        generate_batch(tiny_pipe_fp32, mixed)

    assert str(raised.value) == (
        "requests in one batch must share steps: got [2, 3]; "
        "requests in one batch must share width: got [64, 96]"
    )


def test_it_restores_the_layers_after_the_block(tiny_pipe_fp32):
    unet = tiny_pipe_fp32.unet
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d))

    with batch_invariant(tiny_pipe_fp32.unet):
        assert "forward" in vars(conv)

    assert "forward" not in vars(conv)
