"""Token roles and alignment between the customized and the baseline prompt (real CLIP tokenizer, no weights)."""

import pytest

from alignit_probe.errors import ProbeError
from alignit_probe.models.toy import clip_tokenizer
from alignit_probe.text.concepts import Concept, modifier_ids, tokenize_pair
from alignit_probe.text.prompt_text import baseline_text


class FakePipe:
    """Just a tokenizer with diffusers' multi-vector expansion (``<tok>`` → ``<tok> <tok>_1 …``)."""

    def __init__(self, tokens: dict[str, int]):
        self.tokenizer = clip_tokenizer()
        self.n = tokens
        for tok, n in tokens.items():
            self.tokenizer.add_tokens([tok] + [f"{tok}_{i}" for i in range(1, n)])

    def maybe_convert_prompt(self, prompt, tokenizer):
        for tok, n in self.n.items():
            prompt = prompt.replace(tok, " ".join([tok] + [f"{tok}_{i}" for i in range(1, n)]))
        return prompt


def visible(tp):
    end = tp.label.index(("eos",))
    return [(t, r) for t, r in zip(tp.tokens[: end + 1], tp.role[: end + 1])]


def test_roles_and_alignment_single_concept(base_tok):
    pipe = FakePipe({"<new1>": 1})
    ct, bt = tokenize_pair("photo of a <new1> cat on the beach", pipe, base_tok, [Concept("<new1>", "cat")])
    assert bt.text == "photo of a cat on the beach"
    assert [r for _, r in visible(ct)] == [
        "special",
        "context",
        "context",
        "context",
        "concept",
        "concept",
        "context",
        "context",
        "context",
        "special",
    ]
    assert ct.ids == pipe.tokenizer("photo of a <new1> cat on the beach", padding="max_length", max_length=77).input_ids
    assert bt.ids == base_tok("photo of a cat on the beach", padding="max_length", max_length=77).input_ids
    # context pairs with the same word; <new1> and cat both pair with the baseline's cat; padding pairs in order
    for i, (tok, role) in enumerate(zip(ct.tokens, ct.role)):
        j = ct.ref_index[i]
        if role == "concept":
            assert bt.tokens[j] == "cat</w>"
        elif role == "padding":
            assert bt.role[j] == "padding" and j == i - 1  # baseline is one token shorter
        else:
            assert bt.tokens[j] == tok


def test_multi_vector_several_concepts_and_repeats(base_tok):
    pipe = FakePipe({"<new1>": 3, "<new2>": 1})
    cs = [Concept("<new1>", "cat"), Concept("<new2>", "dog")]
    ct, bt = tokenize_pair("a <new1> cat and a <new2> dog, <new1> on grass", pipe, base_tok, cs)
    assert bt.text == "a cat and a dog, cat on grass"
    concept_tokens = [t for t, r in zip(ct.tokens, ct.role) if r == "concept"]
    assert concept_tokens == [
        "<new1>",
        "<new1>_1",
        "<new1>_2",
        "cat</w>",
        "<new2>",
        "dog</w>",
        "<new1>",
        "<new1>_1",
        "<new1>_2",
    ]
    assert sorted(set(c for c in ct.concept if c >= 0)) == [0, 1]
    assert len(ct.spans) == 3 and len(bt.spans) == 3
    ctx_c = [t for t, r in zip(ct.tokens, ct.role) if r == "context"]
    ctx_b = [t for t, r in zip(bt.tokens, bt.role) if r == "context"]
    assert ctx_c == ctx_b


def test_no_class_word_removes_modifier(base_tok):
    pipe = FakePipe({"<new1>": 1})
    ct, bt = tokenize_pair("a <new1> on the beach", pipe, base_tok, [Concept("<new1>")])
    assert bt.text == "a on the beach"
    assert ct.ref_index[ct.tokens.index("<new1>")] == -1  # nothing to pair with


def test_class_word_stands_in_where_none_follows():
    assert baseline_text("a <new1> on the beach", [Concept("<new1>", "cat")]) == "a cat on the beach"
    assert baseline_text("a <new1> cat", [Concept("<new1>", "cat")]) == "a cat"


def test_truncation_is_explicit(base_tok):
    pipe = FakePipe({"<new1>": 1})
    long = "photo of a <new1> cat " + " ".join(["beach"] * 100)
    ct, bt = tokenize_pair(long, pipe, base_tok, [Concept("<new1>", "cat")])
    assert ct.dropped > 0 and bt.dropped > 0
    assert len(ct.ids) == 77 and ct.ids[-1] == base_tok.eos_token_id
    pipe3 = FakePipe({"<new3>": 3})
    cat = [Concept("<new3>", "cat")]
    beach = " ".join(["beach"] * 80)
    for kept in (f"a <new3> cat {beach} <new3> cat", " ".join(["red"] * 72) + " <new3> cat"):  # one whole occurrence
        ct, _ = tokenize_pair(kept, pipe3, base_tok, cat)  # (the second: only the class word is cut)
        assert ct.dropped > 0 and ct.role.count("concept") >= 3
    for cut in (f"{beach} a <new3> cat", " ".join(["red"] * 73) + " <new3> cat"):  # none whole (2 of 3 vectors)
        with pytest.raises(ProbeError, match="is cut off"):
            tokenize_pair(cut, pipe3, base_tok, cat)


def test_bad_concepts(base_tok):
    pipe = FakePipe({"<new1>": 1})
    with pytest.raises(ProbeError, match="absent from prompt"):
        tokenize_pair("photo of a cat", pipe, base_tok, [Concept("<new1>", "cat")])
    with pytest.raises(ProbeError, match="unknown to the customized"):
        tokenize_pair("photo of a <zzz> cat", pipe, base_tok, [Concept("<zzz>", "cat")])


def concept_tokens(tp):
    return [t for t, r in zip(tp.tokens, tp.role) if r == "concept"]


@pytest.mark.parametrize("word", ["sks", "ohwx", "toy"])
def test_instance_words_are_concepts(base_tok, word):
    pipe = FakePipe({"<new1>": 1})
    prompt = f"a photo of {word} dog on the beach"
    assert modifier_ids(pipe, Concept(word, "dog")) == base_tok(word, add_special_tokens=False).input_ids
    assert len(modifier_ids(pipe, Concept(word))) == 1
    ct, bt = tokenize_pair(prompt, pipe, base_tok, [Concept(word, "dog")])
    assert bt.text == "a photo of dog on the beach"
    assert concept_tokens(ct) == [f"{word}</w>", "dog</w>"]
    assert concept_tokens(bt) == ["dog</w>"]
    assert ct.ids == pipe.tokenizer(prompt, padding="max_length", max_length=77).input_ids
    assert bt.ids == base_tok(bt.text, padding="max_length", max_length=77).input_ids
    dog = bt.tokens.index("dog</w>")
    assert [ct.ref_index[p] for p in ct.spans[0]] == [dog, dog]
    ctx_c = [t for t, r in zip(ct.tokens, ct.role) if r == "context"]
    assert ctx_c == [t for t, r in zip(bt.tokens, bt.role) if r == "context"]


def test_multi_piece_word(base_tok):
    pipe = FakePipe({})
    word = "zwxqplorb"
    pieces = base_tok(word, add_special_tokens=False).input_ids
    assert len(pieces) > 1
    assert modifier_ids(pipe, Concept(word, "cat")) == pieces
    ct, bt = tokenize_pair(f"a {word} cat, sleeping", pipe, base_tok, [Concept(word, "cat")])
    assert bt.text == "a cat, sleeping"
    assert concept_tokens(ct) == base_tok.convert_ids_to_tokens(pieces) + ["cat</w>"]
    assert concept_tokens(bt) == ["cat</w>"]
    cat = bt.tokens.index("cat</w>")
    assert all(ct.ref_index[p] == cat for p in ct.spans[0])
    # no class word after it: the class word stands in
    ct, bt = tokenize_pair(f"a {word} on grass", pipe, base_tok, [Concept(word, "cat")])
    assert bt.text == "a cat on grass" and concept_tokens(ct) == base_tok.convert_ids_to_tokens(pieces)


def test_instance_words_match_on_word_boundaries(base_tok):
    pipe = FakePipe({})
    sks = Concept("sks", "dog")
    assert baseline_text("asksy sks dog", [sks]) == "asksy dog"
    assert baseline_text("sks-dog and tasks", [sks]) == "dog -dog and tasks"
    with pytest.raises(ProbeError, match="absent from prompt"):
        tokenize_pair("a photo of asksy dog", pipe, base_tok, [sks])
    ct, bt = tokenize_pair("asksy and sks dog, sks.", pipe, base_tok, [sks])
    assert len(ct.spans) == 2 and bt.text == "asksy and dog, dog ."
    assert concept_tokens(ct) == ["sks</w>", "dog</w>", "sks</w>"]
    lead = base_tok("asksy and", add_special_tokens=False).input_ids  # asksy stays context
    assert ct.ids[1 : 1 + len(lead)] == lead and set(ct.role[1 : 1 + len(lead)]) == {"context"}
    # CLIP lowercases and splits letters from digits and "_": SKS and sks_dog hold the instance word too
    ct, bt = tokenize_pair("a photo of SKS dog", pipe, base_tok, [sks])
    assert concept_tokens(ct) == ["sks</w>", "dog</w>"] and bt.text == "a photo of dog"
    ct, _ = tokenize_pair("a sks_dog on grass", pipe, base_tok, [sks])
    assert (
        concept_tokens(ct)[0] == "sks</w>" and ct.ids == base_tok("a sks_dog on grass", padding="max_length").input_ids
    )
    # added tokens keep matching anywhere: the tokenizer splits them out anywhere
    added = FakePipe({"<new1>": 1})
    assert baseline_text("a<new1>cat", [Concept("<new1>", "cat")]) == "a cat"
    ct, bt = tokenize_pair("a<new1>cat", added, base_tok, [Concept("<new1>", "cat")])
    assert concept_tokens(ct) == ["<new1>", "cat</w>"] and concept_tokens(bt) == ["cat</w>"]


def test_unknown_token_names_the_added_tokens(base_tok):
    pipe = FakePipe({"<new1>": 3})
    with pytest.raises(ProbeError) as e:
        tokenize_pair("a photo of <new2> dog", pipe, base_tok, [Concept("<new2>", "dog")])
    assert str(e.value) == (
        "concept token '<new2>' is unknown to the customized model's tokenizer — use one of its added tokens: <new1>"
    )
    for bad in ("", "  "):
        with pytest.raises(ProbeError, match="a Concept's token is empty"):
            Concept(bad, "dog")
    with pytest.raises(ProbeError, match="Concept takes strings: got token 123"):
        Concept(123, "cat")
    with pytest.raises(ProbeError, match=r"it added no tokens: load the file that defines <x> \(a Custom Diffusion"):
        modifier_ids(FakePipe({}), Concept("<x>"))  # a placeholder: some artifact must add it
    assert modifier_ids(pipe, Concept("<new1>")) == pipe.tokenizer.convert_tokens_to_ids(
        ["<new1>", "<new1>_1", "<new1>_2"]
    )


def test_class_word_note_only_where_the_prompts_name_the_class_otherwise():
    from alignit_probe.text.prompt_text import class_word_notes

    cat = ["a photo of <new1> cat", "a <new1> cat in the snow"]
    notes = class_word_notes(cat, [Concept("<new1>", "dog")])
    assert len(notes) == 1 and "'cat' follows it in all" in notes[0] and "--class-word cat" in notes[0]
    assert class_word_notes(cat, [Concept("<new1>", "cat")]) == []  # the class word follows
    assert len(class_word_notes(cat, [Concept("<new1>", None)])) == 1  # no class word: said (no partner)
    scenes = ["a <new1> on the beach", "a <new1> in the snow"]  # inserted where it belongs
    assert class_word_notes(scenes, [Concept("<new1>", "dog")]) == []
    assert class_word_notes(["a <new1> cat", "a <new1> dog"], [Concept("<new1>", "dog")]) == []
    for prompts in (["a <new1> on the beach", "a <new1> on a table"], ["a photo of <new1> in the snow"]):
        assert class_word_notes(prompts, [Concept("<new1>", "cat")]) == []  # function words name no class
    assert class_word_notes(["a <s0><s1> wearing a red hat"], [Concept("<s0><s1>", "dog")]) == []


def test_a_concept_that_is_its_own_class_word_is_refused():
    for token in ("dog", "Dog", " dog "):
        with pytest.raises(ProbeError, match="is its own class word.*instance word the model learned"):
            Concept(token, "dog")
    assert Concept("sks", "dog").class_word == "dog" and Concept("dog").class_word is None


def test_class_word_after_punctuation_is_said_as_such():
    from alignit_probe.text.prompt_text import class_word_notes

    (note,) = class_word_notes(["a sks-dog", "a sks dog on the grass"], [Concept("sks", "dog")])
    assert (
        note.startswith("class word 'dog' follows sks only after punctuation in 'a sks-dog'") and "'a dog -dog'" in note
    )
    assert "pass --class-word" not in note  # (it was given: no advice to give it)
    assert class_word_notes(["a sks dog", "sks dog, at night"], [Concept("sks", "dog")]) == []


def test_other_added_tokens_in_the_prompt_are_named(base_tok):
    pipe = FakePipe({"<new1>": 1, "<new2>": 1})
    with pytest.raises(ProbeError, match=r"holds <new2>, a token the customized model added") as e:
        tokenize_pair("a <new1> cat and a <new2> dog", pipe, base_tok, [Concept("<new1>", "cat")])
    assert "name <new2> as a concept too" in e.value.fix
    pivotal = FakePipe({"<s0>": 1, "<s1>": 1})
    with pytest.raises(ProbeError, match="holds <s1>") as e:
        tokenize_pair("a photo of <s0><s1> cat", pivotal, base_tok, [Concept("<s0>", "cat")])
    assert e.value.fix.startswith('pass --concept "<s0><s1>"')
    ct, _ = tokenize_pair("a photo of <s0><s1> cat", pivotal, base_tok, [Concept("<s0><s1>", "cat")])
    assert ct.tokens.count("<s0>") == ct.tokens.count("<s1>") == 1
