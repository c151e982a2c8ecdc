"""Labels: the ImageNet-1k vocabulary that ships with the project, text matching over it, the default model's
classifier read in the vocabulary's order, and the pipeline recording labels (and backfilling them)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from actors.adapters.vector_index.names import tags_field
from actors.adapters.vector_index.queries import rank_by_labels
from actors.contract import Label, MeshConfig, ProcessJob, Status
from actors.labels import UnknownVocabulary, match, stem, vocabulary, words
from actors.preprocess import to_pixels
from tests.unit.workflow_fakes import World, imagenet_probs

VOCAB = vocabulary("imagenet1k")


# --- the vocabulary ---------------------------------------------------------------------------------------
def test_the_imagenet_vocabulary_has_1000_uniquely_named_classes_in_wordnet_id_order() -> None:
    assert len(VOCAB) == 1000
    assert len({c.name for c in VOCAB.classes}) == 1000
    wnids = [c.wnid for c in VOCAB.classes]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000  # the classifier's order: sorted synset ids
    by_name = {c.name: c for c in VOCAB.classes}
    assert by_name["tabby"].index == 281 and by_name["tabby"].synonyms == ("tabby", "tabby cat")
    assert by_name["espresso"].index == 967
    # the names that collide in lower case or as first lemmas are told apart
    assert {
        "crane (bird)",
        "crane (machine)",
        "cardigan",
        "cardigan welsh corgi",
        "maillot",
        "tank suit",
    } <= set(by_name)


def test_an_unknown_vocabulary_is_refused_by_name() -> None:
    for name in ("imagenet21k", "../etc/passwd", ""):
        with pytest.raises(UnknownVocabulary):
            vocabulary(name)


def test_top_keeps_the_probable_classes_most_probable_first_at_most_the_count() -> None:
    probs = imagenet_probs(tabby=0.5, tiger_cat=0.3, egyptian_cat=0.12, lynx=0.05)
    assert VOCAB.top(probs, 0.1, 5) == [
        Label(name="tabby", score=0.5),
        Label(name="tiger cat", score=0.3),
        Label(name="egyptian cat", score=0.12),
    ]
    assert [label.name for label in VOCAB.top(probs, 0.1, 2)] == ["tabby", "tiger cat"]
    assert VOCAB.top(probs, 0.9, 5) == [] and VOCAB.top(probs, 0.1, 0) == []
    with pytest.raises(ValueError, match="1000 classes"):
        VOCAB.top(np.zeros(10, np.float32), 0.1, 5)


# --- the default model's classifier is read in this order -------------------------------------------------
@pytest.fixture(scope="module")
def classify() -> Iterator[object]:
    from ops.models import efficientnet

    model = efficientnet.build()

    def top(photo: np.ndarray, n: int = 5) -> list[str]:
        pixels = to_pixels(Image.fromarray(photo).convert("RGB"), efficientnet.SPEC)
        with torch.no_grad():
            _, probs = model(torch.from_numpy(pixels.copy())[None])
        return [label.name for label in VOCAB.top(probs[0].numpy(), 0.0, n)]

    yield top


@pytest.mark.parametrize(
    ("photo", "expected"),
    [
        ("chelsea", {"tabby", "tiger cat", "egyptian cat"}),  # a tabby cat
        ("coffee", {"espresso", "cup", "coffee mug"}),  # a cup of coffee
        ("camera", {"tripod"}),  # the cameraman behind his camera on a tripod
    ],
)
def test_the_classifiers_outputs_follow_the_vocabularys_order(
    classify: object, photo: str, expected: set[str]
) -> None:
    assert callable(classify)
    top = classify(getattr(data, photo)())
    assert top[0] in expected, top  # a shifted class order would name something else entirely


# --- matching words to labels -----------------------------------------------------------------------------
def test_stemming_handles_common_plurals_and_leaves_singulars_alone() -> None:
    pairs = {
        "cats": "cat",
        "boxes": "box",
        "puppies": "puppy",
        "wolves": "wolf",
        "glass": "glass",
        "bus": "bus",
    }
    for word, singular in pairs.items():
        assert stem(word) == singular
        assert stem(singular) == singular
    assert words("Tabby-Cats, on a SOFA!") == ("tabby", "cat", "on", "a", "sofa")


def test_a_word_finds_every_label_whose_name_or_synonym_has_it() -> None:
    cats = match(VOCAB, "cat").names
    assert {"tabby", "tiger cat", "persian cat", "siamese cat", "egyptian cat"} <= set(cats)
    assert match(VOCAB, "Cats").names == cats  # case and plural
    assert match(VOCAB, "a photo of cats").names == cats  # small words are left out
    assert "catamaran" not in cats  # words, not substrings
    assert match(VOCAB, "tiger cat").names == ("tiger cat",)  # a phrase: that label only
    assert match(VOCAB, "espresso").names == ("espresso",)  # the drink: "espresso maker" is a maker
    assert "coffee mug" in match(VOCAB, "coffee").names  # no name ends with "coffee": anywhere then
    assert "great white shark" in match(VOCAB, "man-eater").names  # a synonym


def test_words_that_name_nothing_together_are_tried_one_by_one() -> None:
    found = match(VOCAB, "tabby or persian").names
    assert set(found) == {"tabby", "persian cat"}


def test_a_query_that_names_no_label_says_why() -> None:
    nothing = match(VOCAB, "xylophonist quux")
    assert nothing.names == () and nothing.reason is not None and "xylophonist" in nothing.reason
    empty = match(VOCAB, "the of a")
    assert empty.names == () and empty.reason is not None and "no word" in empty.reason
    assert match(VOCAB, "cat").reason is None


# --- the index side: tags and ranking ---------------------------------------------------------------------
def test_labels_are_multi_valued_tags_beside_the_metadata() -> None:
    field = tags_field({"album": "x"}, ["tiger cat", "tabby"])
    assert field.split(",") == ["album=x", "label=tabby", "label=tiger%20cat"]
    assert tags_field({"label": "tabby"}, ["tabby"]) == "label=tabby"  # one item, however it came


def test_a_label_search_ranks_by_the_summed_score_of_the_labels_it_named() -> None:
    class Doc:
        def __init__(self, image_id: str, scores: str | None) -> None:
            self.image_id, self.label_scores = image_id, scores

    docs = [
        Doc("a", '{"tabby": 0.4}'),
        Doc("b", '{"tabby": 0.3, "tiger cat": 0.3, "lynx": 0.2}'),
        Doc("c", '{"tiger cat": 0.4}'),
        Doc("d", None),  # indexed without scores (an older document): ranked last, not dropped
    ]
    hits = rank_by_labels(docs, ["tabby", "tiger cat"])
    assert [(h.image_id, h.score) for h in hits] == [("b", 0.6), ("a", 0.4), ("c", 0.4), ("d", 0.0)]


# --- the pipeline -----------------------------------------------------------------------------------------
@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    w.embedder.probs["m1"] = imagenet_probs(tabby=0.62, tiger_cat=0.25, egyptian_cat=0.08)
    yield w
    w.close()


async def test_the_pipeline_records_the_labels_and_indexes_them_with_their_scores(world: World) -> None:
    job = world.add_image(metadata={"album": "x"})
    assert await world.pipeline.process(job) == "done"
    rec = world.store.records[job.image_id]
    assert rec.labels == [Label(name="tabby", score=0.62), Label(name="tiger cat", score=0.25)]  # >= 0.1
    [upsert] = world.nats.upserts
    assert upsert.labels == {"tabby": 0.62, "tiger cat": 0.25} and upsert.tags == {"album": "x"}
    assert world.embedder.calls == ["m1"]  # one inference gave the vector and the labels


async def test_the_configs_cut_and_count_decide_which_labels_are_kept(world: World) -> None:
    world.config.cfg = MeshConfig(active_model="m1", label_min_score=0.05, label_max_count=2)
    job = world.add_image()
    await world.pipeline.process(job)
    assert [label.name for label in world.store.records[job.image_id].labels or []] == ["tabby", "tiger cat"]


async def test_a_model_without_a_classifier_leaves_the_labels_unknown(world: World) -> None:
    world.embedder.probs.clear()
    job = world.add_image()
    await world.pipeline.process(job)
    assert world.store.records[job.image_id].labels is None
    assert world.nats.upserts[0].labels == {}


async def test_a_reembed_labels_an_image_that_has_none_and_keeps_labels_it_has(world: World) -> None:
    job = world.add_image("old1", status=Status.DONE)  # indexed before labels existed
    kept = [Label(name="lynx", score=0.5)]
    other = world.add_image("old2", status=Status.DONE, seed=2, labels=kept)
    for j in (job, other):
        reembed = ProcessJob(image_id=j.image_id, object_key=j.object_key, sha256=j.sha256, models=["m1"])
        assert await world.pipeline.process(reembed) == "reembedded"
    old1 = world.store.records["old1"]
    assert [label.name for label in old1.labels or []] == ["tabby", "tiger cat"]
    assert old1.status == Status.DONE and old1.history[-1]["step"] == "labels"
    assert world.store.records["old2"].labels == kept  # a re-embed never relabels
    assert {u.image_id: u.labels for u in world.nats.upserts} == {
        "old1": {"tabby": 0.62, "tiger cat": 0.25},
        "old2": {"lynx": 0.5},
    }


async def test_a_model_switch_keeps_the_labels_in_the_new_models_index(world: World) -> None:
    job = world.add_image("sw1", status=Status.DONE, labels=[Label(name="tabby", score=0.9)])
    switch = ProcessJob(image_id=job.image_id, object_key=job.object_key, sha256=job.sha256, models=["m2"])
    assert await world.pipeline.process(switch) == "reembedded"  # m2 has no classifier
    [upsert] = world.nats.upserts
    assert (upsert.model, upsert.labels) == ("m2", {"tabby": 0.9})
