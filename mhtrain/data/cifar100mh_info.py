"""The metadata of a CIFAR-100-MH directory (`cifar100mh_dataset_info.json`) as one typed schema.
Such directories are downloaded and shared: the file is read once through the schema, by
`validate` and by training alike, and anything it does not describe (a list where a mapping
belongs, the id `'a'`, a bound of `'9'`, a 5,000-digit number, an image smaller than a model can
pool) is one line naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from mhtrain import DataError

FORMAT = "CIFAR-100-MH"
INFO = "cifar100mh_dataset_info.json"
MAX_BYTES = 1 << 20  # a metadata file is a few hundred bytes
# Image sides: CIFAR's are 32; the project's models pool twice (an image under 4 pixels pools to
# nothing), so 8 is the smallest a dataset may declare, and 4096 the largest.
SIDES, CHANNELS = (8, 4096), (1, 4)
Label = Annotated[int, Field(strict=True, ge=0, le=255)]  # labels are bytes of a record
# a head's name becomes a metric's (`val/<head>_acc`): a name, not text
HeadName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
HeadId = Annotated[str, StringConstraints(strict=True, pattern=r"^(0|[1-9][0-9]{0,2})$")]


class Bounds(BaseModel):
    """A head's label range, `min` to `max` inclusive."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    min: Label = 0
    max: Label
    description: Annotated[str, StringConstraints(max_length=1000)] | None = None

    @model_validator(mode="after")
    def ordered(self) -> Bounds:
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class DatasetInfo(BaseModel):
    """What the file holds: the format, `image_size` "HxWxC", head ids -> names, and optionally
    each head's label range (without one, a head's classes come from its largest label)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    format: Literal["CIFAR-100-MH"]
    image_size: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9]{1,5}x[0-9]{1,5}x[0-9]{1,2}$")]
    parameter_names: Annotated[dict[HeadId, HeadName], Field(min_length=1, max_length=256)]
    parameter_mappings: dict[HeadName, Bounds] = {}

    @model_validator(mode="after")
    def consistent(self) -> DatasetInfo:
        h, w, c = (int(v) for v in self.image_size.split("x"))
        if not (SIDES[0] <= min(h, w) and max(h, w) <= SIDES[1] and CHANNELS[0] <= c <= CHANNELS[1]):
            raise ValueError(f"image_size {self.image_size}: sides must be {SIDES[0]} to {SIDES[1]} "
                             f"pixels and channels {CHANNELS[0]} to {CHANNELS[1]}")
        names = list(self.parameter_names.values())
        if len(set(names)) != len(names) or any(int(i) > 255 for i in self.parameter_names):
            raise ValueError("parameter_names: ids 0 to 255, each naming a different head")
        if unknown := sorted(set(self.parameter_mappings) - set(names)):
            raise ValueError(f"parameter_mappings names no head of parameter_names: {unknown[:3]}")
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w, c = (int(v) for v in self.image_size.split("x"))
        return c, h, w

    @property
    def names(self) -> dict[int, str]:
        return {int(k): v for k, v in self.parameter_names.items()}


def read_info(root: str | Path) -> DatasetInfo:
    """The directory's metadata, checked; a DataError naming the file and field otherwise."""
    path = Path(root) / INFO
    if not path.is_file():
        raise DataError(f"{path} is missing: not a CIFAR-100-MH dataset (build one with "
                        "`python -m mhtrain.data.cifar100mh build --from mnist --out DIR`)")
    if path.stat().st_size > MAX_BYTES:
        raise DataError(f"{path} is {path.stat().st_size} bytes, not metadata; rebuild the dataset")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, a 5,000-digit number
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise DataError(f"{path} is not valid JSON ({why}); rebuild the dataset") from None
    try:
        return DatasetInfo.model_validate(raw)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        why = " ".join(str(first["msg"]).split()).removeprefix("Value error, ")[:160]
        if first["loc"]:
            value = ascii(first.get("input"))
            value = value if len(value) <= 60 else value[:59] + "…"
            why = f"{'.'.join(str(p) for p in first['loc'])} = {value}: {why}"
        raise DataError(f"{path}: not {FORMAT} metadata ({why}); rebuild the dataset or get it from a "
                        "source you trust") from None
