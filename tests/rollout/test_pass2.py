"""Pass-2 prompts with the real Qwen2.5 tokenizer: the device splice (pass-1 tokens verbatim) and
the host oracle (decode, cut, re-tokenize) agree on which completions have a caption, give
the same prompt text, and the same ids where BPE is stable at the seams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbiqa.processing import Processor, build_qwen2_5_tokenizer, load_tokenizer, make_image_processor
from host_pass2 import caption_prompts

from jaxbiqa.rollout import Rollout, RolloutSection, splice_prompts, splice_tables, token_bytes
from jaxbiqa.rollout.textmatch import advance

PAD = 151643
VOCAB_SIZE = 152064

# (completion, caption expected by the method's rule, ids identical between the two paths)
CASES = {
    "method layout": ('<caption>\nA sharp photo of a red bicycle.\n</caption>\n<think>\nSharp.\n</think>\n'
                      '<answer>\n{"rating": 3.42}\n</answer>', True, True),
    "unicode caption": ("<caption>\nCafé au lait, 中文 ñ — blur.\n</caption>\n<think>\nok</think>", True, True),
    "tag inside a token": ('<caption>A blurry dog</caption><think>bad</think><answer>{"rating": 2}</answer>',
                           True, False),  # "><" is one token; ">," too on the host
    "no tag": ('<caption>no think tag</caption><answer>{"rating": 2}</answer>', False, True),
    "empty caption": ("<think>straight to it</think><answer>1</answer>", False, True),
    "whitespace caption": (" \n\n<think>x</think>", False, True),
    "not the tag": ("<caption>a</caption><thinking>x</thinking>", False, True),
    "unfinished tag": ("<caption>a</caption>\n<thi", False, True),
    "two tags": ("<caption>first</caption>\n<think>one\n<think>two", True, True),
}


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    directory = build_qwen2_5_tokenizer(tmp_path_factory.mktemp("qwen_tokenizer"))
    return Processor(load_tokenizer(directory), make_image_processor())


@pytest.fixture(scope="module")
def tools(processor):
    tokenizer = processor.tokenizer

    def encode_batch(texts):
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def encode(text):
        return encode_batch([text])[0]

    return encode, encode_batch, token_bytes(tokenizer, VOCAB_SIZE)


@pytest.fixture(scope="module")
def tables(processor, tools):
    encode, encode_batch, vocab = tools
    return splice_tables(processor.pass2_text, encode, vocab, "think", encode_batch)


_splice = jax.jit(splice_prompts, static_argnums=(3, 4))


def pass1_batch(rows: list[list[int]], width: int = 64):
    """Pass-1 token rows (each ending in <|im_end|>) padded to a fixed shape (one compiled splice)."""
    rows = rows + [[]] * (len(CASES) - len(rows))
    tokens = np.full((len(rows), width), PAD, np.int32)
    for r, row in enumerate(rows):
        tokens[r, :len(row) + 1] = row + [151645]
    return jnp.asarray(tokens), jnp.asarray([len(row) + 1 for row in rows], jnp.int32)


def device_prompts(tables, tokens, lengths, max_caption=72):
    ids, mask, has_caption = _splice(tables, tokens, lengths, max_caption, PAD)
    ids, mask = np.asarray(ids), np.asarray(mask).astype(bool)
    assert all(mask[r, -int(mask[r].sum()):].all() for r in range(len(ids))), "not left padded"
    return [row[m].tolist() for row, m in zip(ids, mask)], np.asarray(has_caption)


def test_device_and_host_paths_agree(processor, tools, tables):
    encode, _, _ = tools
    names = list(CASES)
    texts = [CASES[n][0] for n in names]
    tokens, lengths = pass1_batch([encode(t) for t in texts])
    device, has_device = device_prompts(tables, tokens, lengths)
    completions = [processor.tokenizer.decode(np.asarray(tokens)[r, :int(lengths[r])], skip_special_tokens=True)
                   for r in range(len(names))]
    host, has_host = caption_prompts(completions, processor.pass2_text, encode, "think")
    np.testing.assert_array_equal(has_device, has_host)
    np.testing.assert_array_equal(has_host, [CASES[n][1] for n in names])
    for r, name in enumerate(names):
        caption = texts[r].partition("<think>")[0] if has_host[r] else ""
        assert processor.tokenizer.decode(device[r]) == processor.pass2_text(caption), name
        assert processor.tokenizer.decode(host[r]) == processor.pass2_text(caption), name
        assert (device[r] == host[r]) == CASES[name][2], name


def test_tag_found_whatever_the_pass1_tokens(processor, tools, tables):
    """The model may spell the tag with any tokens (here one character per token)."""
    encode, _, _ = tools
    text = "<caption>\nDark and noisy.\n</caption>\n<think>\nNoise.</think>"
    spelled = [i for ch in text for i in encode(ch)]
    canonical = encode(text)
    assert spelled != canonical
    tokens, lengths = pass1_batch([spelled, canonical])
    prompts, has_caption = device_prompts(tables, tokens, lengths)
    assert has_caption[:2].all()
    expected = processor.pass2_text("<caption>\nDark and noisy.\n</caption>\n")
    assert processor.tokenizer.decode(prompts[0]) == processor.tokenizer.decode(prompts[1]) == expected
    assert prompts[1] == encode(expected)


def test_caption_and_think_variant(processor, tools):
    encode, encode_batch, vocab = tools
    tables = splice_tables(processor.pass2_text, encode, vocab, "answer", encode_batch)
    text = CASES["method layout"][0]
    tokens, lengths = pass1_batch([encode(text), encode("<caption>x</caption><think>y</think>")])
    prompts, has_caption = device_prompts(tables, tokens, lengths)
    np.testing.assert_array_equal(has_caption[:2], [True, False])
    assert prompts[0] == encode(processor.pass2_text(text.partition("<answer>")[0]))
    host, flags = caption_prompts([text, "<caption>x</caption><think>y</think>"], processor.pass2_text, encode,
                                  "answer")
    assert host[0] == prompts[0] and flags.tolist() == [True, False]


def test_overlong_captions_are_flagged_on_both_paths(processor, tools, tables):
    encode, _, _ = tools
    short, long = "<caption>ok</caption>\n<think>", "<caption>" + "very " * 30 + "long</caption>\n<think>"
    tokens, lengths = pass1_batch([encode(short), encode(long)])
    _, has_device = device_prompts(tables, tokens, lengths, max_caption=20)
    _, has_host = caption_prompts([short, long], processor.pass2_text, encode, "think", max_caption_tokens=20)
    np.testing.assert_array_equal(has_device[:2], [True, False])
    np.testing.assert_array_equal(has_host, [True, False])


def test_template_must_hold_the_caption_once(tools):
    encode, _, vocab = tools
    with pytest.raises(ValueError, match="exactly once"):
        splice_tables(lambda caption: caption + caption, encode, vocab, "think")
    with pytest.raises(ValueError, match="'think' or 'answer'"):
        splice_tables(lambda caption: caption, encode, vocab, "<think>")


def test_rollout_from_processor_stops_after_the_answer_tag(processor, tools):
    """The method's rollout on the real vocabulary: `</answer>` ends a row whatever token follows it."""
    encode, _, _ = tools
    rollout = Rollout.from_processor(RolloutSection(), processor, VOCAB_SIZE)
    assert rollout.render("x") == processor.pass2_text("x") and rollout.decode(encode("a b")) == "a b"
    stop = rollout.pass1.stops[0]
    for text, ends in [('<answer>{"rating": 3}</answer>', True), ("</answer>\n", True), ("</answer", False),
                       ("<answer>3</answer >", False)]:
        state = jnp.zeros(1, jnp.int32)
        for token in encode(text):
            state = advance(stop, state, jnp.asarray([token]))
        assert bool(state[0] == stop.length) == ends, text
