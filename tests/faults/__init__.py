"""The fault suite (``-m faults``). A package, unlike the other test folders, so
that its ``conftest`` and ``harness`` are ``faults.conftest`` and ``faults.harness``
to mypy and pytest alike: two top-level ``conftest`` modules would collide."""
