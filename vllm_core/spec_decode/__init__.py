"""Speculative decoding: proposers add draft tokens to requests before ``schedule()``; the
runner verifies them in one forward (``verifier``); the scheduler rolls back the rejected
ones. See docs/speculative-decoding.md."""
