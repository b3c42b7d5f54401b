"""Load tests of the scoring API: the Locust file and its packaged sample."""
