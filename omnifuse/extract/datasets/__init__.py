"""Dataset adapters: raw datasets to rows of inputs (see docs/internals.md, section 2)."""
