"""Stage one: dataset adapters, frozen encoders and the extraction pipeline."""
