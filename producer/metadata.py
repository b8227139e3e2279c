"""Reading back the S3 object metadata videoqueue writes (documented as
`producer.metadata.decode_value`; the code lives in the core)."""

from producer.core.metadata import decode_value

__all__ = ["decode_value"]
