"""Whatever a package holds, loading it raises a ``HandlerError`` (never a library's own
exception, nor a native panic), and text that UTF-8 cannot hold is a ``RequestError``."""

from __future__ import annotations

import pytest

from jpegweights import handlers
from jpegweights.handlers import ArchitectureError, HandlerConfigError, Request, RequestError

from .tiny_text import tiny_text, tokenizer_json

# A SentencePiece normalizer whose charsmap does not parse: tokenizers 0.23 panics in from_str.
PANICS_AT_LOAD = {"type": "Precompiled", "precompiled_charsmap": "/////wAAAAA="}
# One that parses as an empty trie: it panics (index out of bounds) on every text it encodes.
PANICS_ON_ENCODE = {"type": "Precompiled", "precompiled_charsmap": "AAAAAA=="}


def raw_failure(normalizer: dict, text: str = "a") -> BaseException:
    """What the tokenizers library itself raises for such a tokenizer (the test's premise)."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(tokenizer_json(normalizer=normalizer)).encode(text)
    except BaseException as exc:  # noqa: BLE001 - the panic is what we look at
        return exc
    raise AssertionError("the tokenizer did not fail")


@pytest.mark.parametrize(
    "normalizer, message",
    [
        (PANICS_AT_LOAD, "tokenizer does not load: PanicException: Precompiled"),
        (PANICS_ON_ENCODE, "tokenizer fails on a test text: PanicException: index out of bounds"),
    ],
)
def test_a_tokenizer_that_panics_is_a_handler_config_error(normalizer, message):
    exc = raw_failure(normalizer)
    assert type(exc).__name__ == "PanicException" and not isinstance(exc, Exception)
    with pytest.raises(HandlerConfigError, match=message):
        handlers.load(*tiny_text(tokenizer_json(normalizer=normalizer)))


def test_a_tokenizer_whose_unk_token_is_not_in_its_vocabulary_is_refused_at_load():
    message = r"fails on a test text: .*WordPiece error: Missing .* token from the vocabulary"
    with pytest.raises(HandlerConfigError, match=message):
        handlers.load(*tiny_text(tokenizer_json(unk_token="[NOPE]")))


def test_a_tokenizer_failing_on_one_request_is_a_request_error():
    from tokenizers import Tokenizer

    handler = handlers.load(*tiny_text())
    handler.tokenizer = Tokenizer.from_str(tokenizer_json(normalizer=PANICS_ON_ENCODE))
    with pytest.raises(RequestError, match="tokenizer fails on this text: PanicException"):
        handler.decode_request(Request(text=["the cat"]))


def test_a_transformers_config_field_of_the_wrong_type_is_an_architecture_error():
    with pytest.raises(ArchitectureError, match="bad config: .*'hidden_act' expected str, got list"):
        handlers.load(*tiny_text(hidden_act=[]))


RAW = {"name": "raw", "config": {"input_shape": [4]}}


def interrupted():
    raise KeyboardInterrupt


def exits():
    raise SystemExit(3)


def panics():
    """A stand-in for a native panic raised while a module is built: a bare BaseException."""
    raise BaseException("native code panicked")


@pytest.mark.parametrize("factory, raised", [("interrupted", KeyboardInterrupt), ("exits", SystemExit)])
def test_interrupts_and_exits_pass_through_a_load(factory, raised):
    architecture = {"kind": "python", "factory": f"{__name__}:{factory}"}
    with pytest.raises(raised):
        handlers.load({"architecture": architecture, "handler": RAW}, {}, trust_code=True)


def test_any_other_base_exception_while_building_is_an_architecture_error():
    architecture = {"kind": "python", "factory": f"{__name__}:panics"}
    with pytest.raises(ArchitectureError, match="cannot be built: BaseException: native code panicked"):
        handlers.load({"architecture": architecture, "handler": RAW}, {}, trust_code=True)


@pytest.mark.parametrize(
    "request_, message",
    [
        (
            Request(text=["fine", "\ud800"]),
            r"text\[1\] is not valid Unicode: a lone surrogate '\\ud800' at character 0",
        ),
        (Request(pairs=[["a", "ok \udfff"]]), r"pairs\[0\]\[1\] is not valid Unicode: .* at character 3"),
    ],
)
def test_text_with_a_lone_surrogate_is_a_request_error(request_, message):
    handler = handlers.load(*tiny_text())
    with pytest.raises(RequestError, match=message):
        handler.decode_request(request_)
    assert handler.decode_request(Request(text=["é 💥 the cat"]))["input_ids"].shape[0] == 1  # real non-ASCII is fine
