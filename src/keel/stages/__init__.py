"""The stages of one call, each its own module; their order lives in keel.pipeline."""
