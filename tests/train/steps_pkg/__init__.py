"""A user's package of training code, for the custom-step tests (put ``tests/train`` on PYTHONPATH)."""
