"""Shared test fixtures. Tests never touch the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402


def make_byte_tokenizer(add_bos: bool = False):
    """Return a tiny byte-level PreTrainedTokenizerFast (256 byte tokens + <s> </s> <pad>), built offline.

    With ``add_bos`` the tokenizer prepends <s> when called with add_special_tokens=True (like Llama).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture
def byte_tokenizer():
    return make_byte_tokenizer()


def save_tiny_model(folder, model_type: str):
    """A tiny random ``model_type`` model and the byte tokenizer (with BOS) saved in ``folder``:
    a local model folder as a user would have one."""
    from tiny_models import tiny_model

    tiny_model(model_type).save_pretrained(folder)
    make_byte_tokenizer(add_bos=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A tiny Llama folder shared by the tests that only read it."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")
