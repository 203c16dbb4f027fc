"""A gallery of batch-normalization implementations: one correct, many with one known bug.

The conformance suite's own proof: ``tests/conformance/test_gallery.py`` checks that the
engine catches every bug under the clause it violates and passes the correct ones.
"""
