"""Handlers and architectures on small models: every package problem is a HandlerError naming it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from jpegweights import handlers
from jpegweights.handlers import (
    ArchitectureError,
    HandlerConfigError,
    Request,
    RequestError,
    UntrustedCodeError,
    collate,
    split,
)

TINY = {"kind": "torchvision", "name": "squeezenet1_1", "kwargs": {"num_classes": 3}}


def tiny_state():
    return handlers.build(TINY).state_dict()


def image_handler(**config):
    return {
        "name": "image-classification",
        "config": {"input_shape": [3, 32, 32], "resize": 40, "labels": ["a", "b", "c"], **config},
    }


def png(mode="RGB", size=(50, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, "PNG")
    return buf.getvalue()


def test_torchvision_image_classifier_answers_top_k_with_names():
    h = handlers.load({"architecture": TINY, "handler": image_handler(top_k=2)}, tiny_state())
    request = Request(images=[png(), png("L"), png("RGBA")], options={"top_k": 3})
    answer = h.encode_response(h.run(h.decode_request(request)), request)
    assert len(answer["top_k"]) == 3 and [len(t) for t in answer["top_k"]] == [3, 3, 3]
    assert set(answer["labels"]) <= {"a", "b", "c"} and "probabilities" not in answer
    assert abs(sum(t["score"] for t in answer["top_k"][0]) - 1) < 1e-5
    assert [s.name for s in h.signature.outputs] == ["probabilities", "predictions", "labels"]


@pytest.mark.parametrize(
    "request_, message",
    [
        (Request(images=[b"not an image"]), "images[0] is not a readable JPEG, PNG or WebP image"),
        (
            Request(inputs=np.zeros((1, 1, 32, 32))),
            "each sample must be 3x32x32 or 3072, got 1x32x32",
        ),  # wrong channels
        (Request(inputs=np.full((1, 3, 32, 32), 300.0)), "values outside 0..255"),
        (Request(text=["a cat"]), "this model classifies images"),
        (Request(images=[png(size=(5000, 5000))]), "over the 1000000-pixel limit"),
    ],
)
def test_bad_image_requests_are_request_errors(request_, message):
    h = handlers.load({"architecture": TINY, "handler": image_handler()}, tiny_state())
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        h.decode_request(request_, handlers.Limits(max_pixels=1_000_000))


def test_a_gif_is_refused_by_format():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    h = handlers.load({"architecture": TINY, "handler": image_handler()}, tiny_state())
    with pytest.raises(RequestError, match="images\\[0\\] is GIF"):
        h.decode_request(Request(images=[buf.getvalue()]))


@pytest.mark.parametrize(
    "manifest, error, message",
    [
        ({"architecture": TINY}, HandlerConfigError, "declares no handler"),
        ({"handler": image_handler()}, ArchitectureError, "declares no architecture"),
        ({"architecture": TINY, "handler": {"name": "nope"}}, HandlerConfigError, "unknown handler 'nope'"),
        ({"architecture": TINY, "handler": {"class": "os:system"}}, UntrustedCodeError, "trusted store"),
        (
            {"architecture": {"kind": "python", "factory": "os:system"}, "handler": image_handler()},
            UntrustedCodeError,
            "trusted store",
        ),
        (
            {"architecture": {"kind": "torchvision", "name": "no_such_net"}, "handler": image_handler()},
            ArchitectureError,
            "torchvision has no model 'no_such_net'",
        ),
        (
            {
                "architecture": {"kind": "torchvision", "name": "resnet18", "kwargs": {"weights": "DEFAULT"}},
                "handler": image_handler(),
            },
            ArchitectureError,
            "may not name weights",
        ),
        (
            {
                "architecture": {"kind": "transformers", "config": {"model_type": "bert", "auto_map": {}}},
                "handler": image_handler(),
            },
            ArchitectureError,
            "remote code",
        ),
        (
            {"architecture": {"kind": "keras"}, "handler": image_handler()},
            ArchitectureError,
            "unknown architecture kind 'keras'",
        ),
        (
            {"architecture": TINY, "handler": image_handler(labels=["a"])},
            HandlerConfigError,
            "1 labels for a model with 3 classes",
        ),
        (
            {"architecture": TINY, "handler": image_handler(input_shape=[2, 32, 32])},
            HandlerConfigError,
            "input_shape must be",
        ),
        ({"architecture": TINY, "handler": image_handler(std=[0, 1, 1])}, HandlerConfigError, "'std' must be"),
        (
            {"architecture": TINY, "handler": {"name": "text-embedding", "config": {"tokenizer": "{}"}}},
            HandlerConfigError,
            "tokenizer does not load",
        ),
    ],
)
def test_package_problems_are_handler_errors(manifest, error, message):
    with pytest.raises(error, match=message):
        handlers.load(manifest, tiny_state())


def test_tensors_that_do_not_fit_name_what_is_wrong():
    state = tiny_state()
    state["extra.weight"] = torch.zeros(1)
    state["classifier.1.weight"] = torch.zeros(4, 512, 1, 1)
    del state["classifier.1.bias"]
    with pytest.raises(
        ArchitectureError,
        match=r"missing \['classifier.1.bias'\]; unexpected \['extra.weight'\]; wrong shape \['classifier.1.weight'\]",
    ):
        handlers.load({"architecture": TINY, "handler": image_handler()}, state)


def test_python_architecture_and_handler_class_load_when_trusted():
    arch = {"kind": "python", "factory": "torch.nn:Linear", "kwargs": {"in_features": 4, "out_features": 2}}
    spec = {"class": "jpegweights.handlers.raw:Raw", "config": {"input_shape": [4]}}
    state = {"weight": torch.eye(2, 4), "bias": torch.zeros(2)}
    h = handlers.load({"architecture": arch, "handler": spec}, state, trust_code=True)
    request = Request(inputs=[[1, 2, 3, 4]])
    assert h.encode_response(h.run(h.decode_request(request)), request) == {"outputs": [[1.0, 2.0]]}


def test_collate_pads_sequences_and_split_gives_each_request_its_rows():
    a = {"ids": torch.ones(2, 3, dtype=torch.long), "flag": torch.tensor([True, False])}
    b = {"ids": torch.full((1, 5), 7), "flag": torch.tensor([True])}
    joined = collate([a, b])
    assert joined["ids"].shape == (3, 5) and joined["ids"][0].tolist() == [1, 1, 1, 0, 0]
    back = split(joined, [2, 1])
    assert back[1]["ids"].tolist() == [[7] * 5] and back[0]["flag"].tolist() == [True, False]


def test_a_preload_still_under_way_is_waited_for():
    """The client preloads torchvision while a package downloads; building must not import it
    a second time concurrently (transformers' lazy module raised ImportError that way)."""
    from jpegweights.handlers import architectures

    architectures.preload(TINY)
    handlers.load({"architecture": TINY, "handler": image_handler()}, tiny_state())


def test_a_module_with_buffers_outside_its_state_dict_is_built_without_drawing_an_initialisation():
    """BERT computes ``position_ids`` itself, so it is built on the CPU rather than the meta
    device: with no random initialisation drawn (the tensors replace it at once), and holding
    the given tensors themselves, not copies."""
    from tests.handlers.tiny_text import tiny_text

    manifest, state = tiny_text()
    before = torch.random.get_rng_state()
    module = handlers.build(manifest["architecture"], state)
    assert torch.equal(torch.random.get_rng_state(), before), "an initialisation was drawn"
    live = module.state_dict()
    assert all(live[k].data_ptr() == v.data_ptr() for k, v in state.items())
    assert torch.equal(module.embeddings.position_ids, torch.arange(32)[None])


def test_batchnorm_after_a_convolution_is_folded_into_it_and_computes_the_same():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.BatchNorm2d(8)
    )
    for bn in (net[1], net[3]):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    expected = net(x)
    fused = handlers.architectures.fuse_batchnorm(net)
    assert [type(m).__name__ for m in fused] == [
        "Conv2d",
        "Identity",
        "ReLU",
        "BatchNorm2d",
    ]  # the second follows no convolution
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_a_torchvision_cnn_is_served_without_batchnorm_in_channels_last_with_the_same_answers():
    arch = {"kind": "torchvision", "name": "mobilenet_v2", "kwargs": {"num_classes": 3, "width_mult": 0.25}}
    plain = handlers.build(arch)
    for m in plain.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    handler = handlers.load({"architecture": arch, "handler": image_handler()}, plain.state_dict())
    assert handler.channels_last and not any(isinstance(m, torch.nn.BatchNorm2d) for m in handler.module.modules())
    x = torch.rand(2, 3, 32, 32) * 255
    torch.testing.assert_close(handler.forward({"input": x}), plain(handler.normalize(x)), rtol=1e-4, atol=1e-4)
