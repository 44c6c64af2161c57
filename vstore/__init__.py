"""vstore: distributed storage for container disks and checkpoint images.

Package map and import rules: docs/architecture.md (checked by tests/unit/test_layering.py).
"""

__version__ = "0.1.0"
