"""The one exception type that the console scripts turn into a single error line."""


class NnkdError(Exception):
    """Bad input or state a user can fix: says what is wrong and what to do about it."""

    def __init__(self, problem: str, remedy: str = ""):
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{problem} — {remedy}" if remedy else problem)
