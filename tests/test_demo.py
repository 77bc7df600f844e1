"""The example-photo generator the quickstart and benchmarks rely on."""

import numpy as np

from seqlib.demo import EXAMPLES, concept_specs, draw_example


def test_concept_specs_are_distinct_and_start_with_the_examples():
    specs = concept_specs(32)
    assert len(specs) == 32
    assert list(specs)[:3] == list(EXAMPLES)
    assert len(set(specs.values())) == 32


def test_photos_are_deterministic_and_varied():
    spec = concept_specs(5)["square4"]
    a, b, c = (np.asarray(draw_example("square4", i, spec=spec)) for i in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5  # pose, scale and background change
    assert a.shape == (64, 64, 3)
