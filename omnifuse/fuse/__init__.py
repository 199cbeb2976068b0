"""Stage two: fusion networks (OmniFuse and baselines) trained on the cached features."""
