"""The benchmark steps' error: a problem the user can fix, one line per problem."""


class BenchError(ValueError):
    """A problem the user can fix (bad layout, missing files, bad config): one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
