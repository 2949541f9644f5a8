"""What one request may cost, refused before the work: JPEGs of too many scans, images whose
pixels add up past the request's budget, texts whose padded tokens do; and tokenizing, stopped
when its time runs out."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from jpegweights import handlers
from jpegweights.handlers import Limits, Request, RequestError, RequestTooLarge
from jpegweights.handlers.image import MAX_JPEG_SCANS
from tests.handlers.test_handlers import TINY, image_handler, png, tiny_state
from tests.handlers.tiny_text import tiny_text, tokenizer_json


@pytest.fixture(scope="module")
def image_model():
    return handlers.load({"architecture": TINY, "handler": image_handler()}, tiny_state())


def progressive_jpeg(extra_scans: int = 0) -> bytes:
    """A progressive JPEG (libjpeg's 10 scans), with its last scan repeated ``extra_scans`` times:
    what a hostile file of many scans looks like, each one a pass over the whole image."""
    buf = io.BytesIO()
    Image.effect_noise((64, 48), 40).convert("RGB").save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * extra_scans + data[-2:]


def test_a_progressive_jpeg_is_decoded(image_model):
    data = progressive_jpeg()
    assert 1 < data.count(b"\xff\xda") <= MAX_JPEG_SCANS
    assert image_model.decode_request(Request(images=[data]))["input"].shape == (1, 3, 32, 32)


def test_a_jpeg_of_too_many_scans_is_refused_from_its_bytes(image_model):
    data = progressive_jpeg(extra_scans=MAX_JPEG_SCANS)
    scans = data.count(b"\xff\xda")
    with pytest.raises(
        RequestTooLarge, match=rf"images\[0\] is a JPEG of {scans} scans; the limit is {MAX_JPEG_SCANS}"
    ):
        image_model.decode_request(Request(images=[data]))


def test_images_past_the_requests_pixel_budget_are_refused_before_any_is_decoded(image_model):
    # the second image's data ends after its header: decoding it first would fail on that instead
    broken = png(size=(50, 40))[:60]
    limits = Limits(max_request_pixels=3999)
    with pytest.raises(RequestTooLarge, match="the request's 2 images hold 4000 pixels; the limit is 3999"):
        image_model.decode_request(Request(images=[png(size=(40, 50)), broken]), limits)
    with pytest.raises(RequestError, match=r"images\[1\] is not a readable"):  # within the budget: decoded
        image_model.decode_request(Request(images=[png(size=(40, 50)), broken]), Limits(max_request_pixels=4000))


@pytest.fixture(scope="module")
def text_model():
    return handlers.load(*tiny_text())  # max_length 16


def test_texts_past_the_token_budget_are_refused_counting_the_padding(text_model):
    # "the cat sat" is 5 tokens with [CLS] and [SEP]; "the" alone 3: padded, 3 rows of 5
    texts = ["the", "the cat sat", "the"]
    assert text_model.decode_request(Request(text=texts), Limits(max_tokens=15))["input_ids"].shape == (3, 5)
    with pytest.raises(
        RequestTooLarge, match="3 texts, padded to the longest .5 tokens., are 15 tokens; the limit is 14"
    ):
        text_model.decode_request(Request(text=texts), Limits(max_tokens=14))
    with pytest.raises(RequestTooLarge, match="4 texts"):  # pairs count both of their texts
        text_model.decode_request(Request(pairs=[["the", "cat"], ["the cat sat", "a"]]), Limits(max_tokens=19))


# A package's normalizer whose regex backtracks: 0.15 s of tokenizing for each of these 31
# characters here (a longer run reaches Oniguruma's retry limit, and its Rust code panics).
BACKTRACKING = {"type": "Replace", "pattern": {"Regex": "(a|aa)+$"}, "content": "x"}
SLOW_TEXT = "a" * 30 + "b"


def test_tokenizing_past_its_time_is_stopped_and_the_next_request_gets_a_fresh_process():
    model = handlers.load(*tiny_text(tokenizer_json(normalizer=BACKTRACKING)))
    limits = Limits(max_samples=1024, tokenize_timeout_s=2)
    good = model.decode_request(Request(text=["the cat sat"]), limits)["input_ids"]
    assert model.decode_request(Request(text=["the cat sat"]))["input_ids"].equal(good)  # as tokenized in-process
    first = model.process.proc
    with pytest.raises(RequestTooLarge, match="the model's tokenizer took more than 2 s on this request"):
        model.decode_request(Request(text=[SLOW_TEXT] * 1024), limits)  # minutes of work in one thread
    assert first.returncode is not None and model.process.proc is None  # killed, not left running
    assert model.decode_request(Request(text=["the cat sat"]), limits)["input_ids"].equal(good)
    with pytest.raises(RequestError, match="tokenizer fails on this text: PanicException: Onig: .*retry-limit"):
        model.decode_request(Request(text=["a" * 40 + "b"]), limits)  # answered by the process, which lives on
    assert model.process.proc.poll() is None
