"""A teacher spec, `family:PATH[?key=value&…]`, parsed once where it enters (command line, Python API) and
read by the registry, the run names and the launchers: the one parser of the text form."""

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from nnkd.errors import NnkdError


@dataclass(frozen=True)
class TeacherSpec:
    family: str
    path: str
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "TeacherSpec":
        family, sep, rest = text.partition(":")
        if "?" in family:  # a bare family with options, e.g. deepbet?size=128,128,128
            family, sep, rest = text.partition("?")
            rest = "?" + rest
        if not family or (sep and not rest):
            raise NnkdError(f"teacher spec '{text}' is not of the form family:PATH[?key=value&…]",
                            "e.g. nnunet:/path/to/model_folder; nnkd_teachers lists the families")
        path, _, query = rest.partition("?")
        try:
            options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
        except ValueError as e:
            raise NnkdError(f"teacher spec '{text}' has malformed options '{query}'",
                            "write options as ?key=value&key=value") from e
        return cls(family, path, options, text)

    def canonical(self) -> str:
        """The spec with its path resolved (a relative and an absolute path to one teacher are one teacher)."""
        if not self.path:
            return self.text
        _, mark, query = self.text.partition(":")[2].partition("?")  # the options as written
        return f"{self.family}:{Path(self.path).expanduser().resolve()}{mark}{query}"
