"""What text the model sees of a message: its fields joined into one text (data.text_column,
data.text_template), and which of its tokens are kept when it is longer than max_length
(model.truncation). Training, the trunk cache, evaluate, `spamgpt classify`, `spamgpt predict`
and the served model all go through these, so a message is read the same way everywhere.
"""

import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from spamgpt.errors import ParamsError

FIELD_SEPARATOR = "\n\n"  # between fields when there is no template: a blank line
TRUNCATIONS = ("head", "tail", "head_tail")


@dataclass(frozen=True)
class TextFields:
    """The columns a message's text comes from, and the template joining them (None: the
    fields joined by a blank line; a single field is the text itself). `setting`: where the
    columns came from, as errors name it (data.text_column, or a command's flag). `names`: the
    template's name of each column, where they differ (renamed); None: the columns' own."""

    columns: tuple[str, ...] = ("text",)
    template: str | None = None
    setting: str = field(default="data.text_column", compare=False, repr=False)
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.columns or len(set(self.columns)) != len(self.columns):
            raise ParamsError(
                f"{self.setting}: must name one column or a list of different columns, "
                f"got {list(self.columns)}"
            )
        if self.template is not None:
            names = self.names or self.columns
            unknown = [name for name in template_fields(self.template) if name not in names]
            if unknown:
                raise ParamsError(
                    f"data.text_template: names field {{{unknown[0]}}}, which is not in "
                    f"{self.setting} ({', '.join(names)}); allowed: those fields"
                )

    @classmethod
    def of(
        cls, text_column: str | list[str] | tuple[str, ...], template: str | None = None
    ) -> "TextFields":
        """From data.text_column (one column or a list) and data.text_template."""
        columns = (text_column,) if isinstance(text_column, str) else tuple(text_column)
        return cls(columns, template)

    def join(self, values: Mapping[str, str]) -> str:
        """The text of one message from its fields (every column present, each a str)."""
        if self.template is not None:
            if self.names is not None:  # each field under the template's name for it
                values = dict(zip(self.names, (values[c] for c in self.columns), strict=True))
            return self.template.format_map(values)
        if len(self.columns) == 1:
            return values[self.columns[0]]
        return FIELD_SEPARATOR.join(values[c] for c in self.columns)

    def renamed(self, columns: tuple[str, ...], setting: str) -> "TextFields":
        """The same fields read from other columns (the i-th field from columns[i]), the
        template kept as it is, with its own names for them: any column name will do, even
        one a template could not name ('subject.line', '0'); `setting`: where the columns came
        from (a command's flag)."""
        if len(columns) != len(self.columns):
            raise ValueError(f"{len(self.columns)} fields, {len(columns)} columns")
        if self.template is None:
            return TextFields(columns, setting=setting)
        return TextFields(columns, self.template, setting, self.names or self.columns)

    def to_dict(self) -> dict:
        return {"text_columns": list(self.columns), "text_template": self.template}

    @classmethod
    def from_dict(cls, meta: Mapping) -> "TextFields":
        """From classifier.json (a model from before text fields: the one column 'text')."""
        return cls(tuple(meta.get("text_columns", ["text"])), meta.get("text_template"))


def template_fields(template: str) -> list[str]:
    """The field names of a str.format template; a template that does not parse, or has a
    positional field ({} or {0}), is a ParamsError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ParamsError(f"data.text_template: not a valid template ({e})") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        base = name.split(".")[0].split("[")[0]
        if base == "" or base.isdigit():
            raise ParamsError(
                f"data.text_template: {{{name}}} is positional; name a field, such as {{subject}}"
            )
        names.append(base)
    return names


@dataclass(frozen=True)
class Truncation:
    """Which tokens of a message longer than max_length are kept: the first (head), the last
    (tail), or head_ratio of max_length from the start and the rest from the end
    (head_tail: Sun et al. 2019 kept head 128 + tail 382 of BERT's 512)."""

    side: str = "head"
    head_ratio: float = 0.25

    def __post_init__(self) -> None:
        if self.side not in TRUNCATIONS:
            raise ParamsError(
                f"model.truncation: must be one of {', '.join(TRUNCATIONS)}, got {self.side!r}"
            )

    def head(self, max_length: int) -> int:
        """Tokens kept from the start of a long message (the rest of max_length: from its end)."""
        if self.side == "head":
            return max_length
        if self.side == "tail":
            return 0
        return min(max_length, round(max_length * self.head_ratio))

    def keep(self, ids: list[int], max_length: int) -> list[int]:
        """One message's ids as the model reads them."""
        if len(ids) <= max_length:
            return ids
        head = self.head(max_length)
        return ids[:head] + ids[len(ids) - (max_length - head) :]

    def to_dict(self) -> dict:
        return {"truncation": self.side, "head_ratio": self.head_ratio}

    @classmethod
    def from_dict(cls, meta: Mapping) -> "Truncation":
        """From classifier.json (a model from before truncation choices: the head)."""
        return cls(meta.get("truncation", "head"), meta.get("head_ratio", 0.25))


ONE_TEXT = TextFields()  # the column 'text' as it is: a model from before text fields
HEAD = Truncation()  # the first max_length tokens: the default, and older models' rule
