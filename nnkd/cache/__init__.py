"""Cached teacher: run the teacher once per training case, train from its stored soft predictions."""
