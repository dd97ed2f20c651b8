"""The OCI distribution-spec conformance suite (v1.1.1 plus later stricter checks), ported to
pytest. See README.md in this directory."""
