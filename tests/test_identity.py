"""The identity metric (the offline DINO stand-in): shipped weights, sanity on unseen concepts."""

import torch

from seqlib.heldout import held_out, pair_photo, photo
from seqlib.identity import found, halves, identity_scores, load_encoder, reference, to_tensor


def _setup(count: int = 6):
    encoder = load_encoder()
    concepts = list(held_out(count).values())
    refs = torch.stack([reference(encoder, to_tensor([photo(c, i) for i in range(6)])) for c in concepts])
    return encoder, concepts, refs


def test_same_concept_scores_clearly_above_other_concepts():
    encoder, concepts, refs = _setup()
    queries = to_tensor([photo(c, 100 + i) for c in concepts for i in range(3)])  # poses it was not given
    s = identity_scores(encoder, queries, refs).reshape(len(concepts), 3, len(concepts)).mean(1)
    same = s.diagonal()
    other = s.masked_fill(torch.eye(len(concepts), dtype=torch.bool), -2).max(-1).values
    assert (same > other + 0.2).all(), (same, other)
    assert same.mean() > 0.7


def test_halves_keep_each_side_at_full_size():
    x = torch.zeros(1, 3, 64, 64)
    x[..., :32] = 1.0
    h = halves(x)
    assert h.shape == (2, 3, 64, 64)
    assert h[0].min() == 1.0 and h[1].max() == 0.0  # left half all ones, right all zeros


def test_composition_check_finds_both_concepts_and_not_a_wrong_pair():
    encoder, concepts, refs = _setup()
    image = to_tensor([pair_photo(concepts[1], concepts[2], 0), pair_photo(concepts[3], concepts[0], 1)])
    assert found(encoder, image[:1], refs, (1, 2)).item()
    assert found(encoder, image[:1], refs, (2, 1)).item()  # either order
    assert not found(encoder, image[:1], refs, (1, 4)).item()
    assert found(encoder, image[1:], refs, (3, 0)).item()
