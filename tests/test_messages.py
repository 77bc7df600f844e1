"""Messages that name the problem and the way out (issue 27), as pure functions."""

from __future__ import annotations

import pytest

from seqlib.backends import open_backend
from seqlib.errors import UsageError, object_store_reason
from seqlib.selection import example_prompt, unknown_concept


def test_object_store_errors_are_said_in_words_not_the_providers_chain():
    metadata = RuntimeError("Generic S3 error: Error performing token request: http://169.254.169.254/latest/api/token")
    assert object_store_reason(metadata).startswith("no access: the credentials are missing or refused")
    dns = RuntimeError("error sending request: dns error: resolve_deny: failed to lookup address information")
    assert object_store_reason(dns) == "cannot reach the endpoint (check the network and AWS_ENDPOINT_URL)"
    assert "169.254" not in object_store_reason(metadata) and "resolve_deny" not in object_store_reason(dns)


def test_a_url_no_object_store_serves_is_a_usage_error():
    with pytest.raises(UsageError, match="not at a ftp:// URL"):
        open_backend("ftp://example.org/lib")


def test_hints_name_what_the_user_selected():
    assert example_prompt("mascot,robot=0.5") == "a photo of <mascot> and <robot>"
    message = str(unknown_concept("mascto", ["emblem", "mascot", "robot"]))
    assert "did you mean 'mascot'?" in message and "concepts: emblem, mascot, robot" in message
    assert "did you mean" not in str(unknown_concept("zzz", ["mascot"]))
