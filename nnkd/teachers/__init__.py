"""Teachers: the Teacher interface, its registry and one builder per model family."""
