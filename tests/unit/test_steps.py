"""Pipeline steps without servers: the registry, the runner, the ``exif`` and ``moderation`` steps."""

from __future__ import annotations

import io
import re
from fractions import Fraction
from typing import Any

import pytest
from PIL import ExifTags, Image

from actors.config_rules import InvalidConfig, apply_change
from actors.contract import ImageRecord, MeshConfig, Status
from actors.steps import STEPS, StepContext, StepRejected, StepResult, run_steps
from actors.steps.exif import degrees, iso_time, read_exif
from actors.steps.moderation import evaluate, parse_rule, rules_problem


def jpeg_with_exif(size: tuple[int, int] = (64, 48), *, gps: bool = True, **fields: str) -> bytes:
    img = Image.new("RGB", size, (120, 80, 40))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = fields.get("make", "Canon")
    exif[ExifTags.Base.Model] = fields.get("model", "EOS 5D Mark IV")
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = fields.get(
        "taken", "2021:07:14 09:30:05"
    )
    if gps:
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(
            {
                ExifTags.GPS.GPSLatitudeRef: "S",
                ExifTags.GPS.GPSLatitude: (Fraction(33), Fraction(52), Fraction(1)),
                ExifTags.GPS.GPSLongitudeRef: "E",
                ExifTags.GPS.GPSLongitude: (Fraction(151), Fraction(12), Fraction(36)),
            }
        )
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif)
    return out.getvalue()


def context(
    data: bytes, config: MeshConfig | None = None, metadata: dict[str, Any] | None = None
) -> StepContext:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    rec = ImageRecord(
        image_id="img1",
        status=Status.PROCESSING,
        sha256="0" * 64,
        object_key="k",
        content_type="image/jpeg",
        size_bytes=len(data),
        width=img.width,
        height=img.height,
        metadata=dict(metadata or {}),
    )
    return StepContext(
        image_id="img1",
        data=data,
        image=img,
        record=rec,
        config=config or MeshConfig(),
        metadata=dict(metadata or {}),
    )


class Notes:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, step: str, detail: dict[str, Any]) -> None:
        self.entries.append((step, detail))


# --- the registry and the config ----------------------------------------------------------------------------
def test_the_registry_ships_exif_and_moderation() -> None:
    assert {"exif", "moderation"} <= set(STEPS)
    for step in STEPS.values():
        assert callable(step.run)


def test_the_config_actor_refuses_unknown_steps_and_bad_rules() -> None:
    assert apply_change(MeshConfig(), "pipeline_steps", ["exif", "moderation"]).pipeline_steps == [
        "exif",
        "moderation",
    ]
    with pytest.raises(InvalidConfig) as info:
        apply_change(MeshConfig(), "pipeline_steps", ["exif", "watermark"])
    assert "unknown step 'watermark'" in info.value.reason and "exif" in info.value.reason
    cfg = apply_change(MeshConfig(), "moderation_rules", ["min_side:32", "flag:max_aspect_ratio:3"])
    assert cfg.moderation_rules == ["min_side:32", "flag:max_aspect_ratio:3"]
    for bad in (
        ["min_side:x"],
        ["nudity:1"],
        ["reject_metadata:novalue"],
        ["min_side:0"],
        ["min_side:1", "min_side:1"],
    ):
        with pytest.raises(InvalidConfig):
            apply_change(MeshConfig(), "moderation_rules", bad)
    assert apply_change(MeshConfig(), "exif_keep_gps", True).exif_keep_gps is True
    with pytest.raises(InvalidConfig):
        apply_change(MeshConfig(), "exif_keep_gps", "yes")


# --- exif ---------------------------------------------------------------------------------------------------
def test_exif_reads_camera_and_time_and_leaves_gps_out_by_default() -> None:
    data = jpeg_with_exif()
    assert read_exif(data) == {
        "exif.make": "Canon",
        "exif.model": "EOS 5D Mark IV",
        "exif.taken_at": "2021-07-14T09:30:05",
    }
    kept = read_exif(data, keep_gps=True)
    assert kept["exif.gps_lat"] == pytest.approx(-(33 + 52 / 60 + 1 / 3600), abs=1e-6)
    assert kept["exif.gps_lon"] == pytest.approx(151 + 12 / 60 + 36 / 3600, abs=1e-6)


def test_exif_of_images_without_it_or_with_junk() -> None:
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, "PNG")
    assert read_exif(plain.getvalue()) == {}
    assert read_exif(b"not an image") == {}
    assert iso_time("2020:01:02 03:04:05\x00") == "2020-01-02T03:04:05"
    assert iso_time("sometime") == "sometime"
    assert iso_time("   ") is None
    assert degrees((1, 2), "N") is None
    assert read_exif(jpeg_with_exif(make="  Nikon\x00\x00 ", gps=False))["exif.make"] == "Nikon"


async def test_exif_step_adds_metadata_and_a_note() -> None:
    notes = Notes()
    ctx = context(jpeg_with_exif(), MeshConfig(pipeline_steps=["exif"]), {"album": "x"})
    out = await run_steps(["exif"], ctx, notes)
    assert out.metadata["exif.make"] == "Canon" and "exif.gps_lat" not in out.metadata
    assert ctx.metadata["album"] == "x" and ctx.metadata["exif.model"] == "EOS 5D Mark IV"
    step, detail = notes.entries[0]
    assert step == "exif" and detail["outcome"] == "ok" and "status" not in detail
    assert detail["fields"] == ["exif.make", "exif.model", "exif.taken_at"]


# --- moderation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "size", "metadata", "matches"),
    [
        ("min_side:32", (31, 100), {}, True),
        ("min_side:32", (32, 100), {}, False),
        ("max_side:100", (101, 10), {}, True),
        ("max_side:100", (100, 10), {}, False),
        ("max_aspect_ratio:4", (401, 100), {}, True),
        ("max_aspect_ratio:4", (400, 100), {}, False),
        ("max_aspect_ratio:4", (100, 401), {}, True),
        ("reject_metadata:album=spam", (10, 10), {"album": "spam"}, True),
        ("reject_metadata:album=spam", (10, 10), {"album": "ham"}, False),
        ("reject_metadata:n=3", (10, 10), {"n": 3}, True),
        ("reject_metadata:exif.make=Evil", (10, 10), {"exif.make": "Evil"}, True),
    ],
)
def test_rules_match(rule: str, size: tuple[int, int], metadata: dict[str, Any], matches: bool) -> None:
    assert (parse_rule(rule).match(*size, metadata) is not None) is matches


def test_rule_parsing_says_what_is_wrong() -> None:
    assert parse_rule("flag:min_side:64").flag
    assert parse_rule("reject_metadata:k=a=b").value == "a=b"
    for bad, says in [
        ("min_side", "must be [flag:]<kind>:<argument>"),
        ("blur:3", "must be [flag:]<kind>:<argument>"),
        ("min_side:big", "is not a number"),
        ("max_aspect_ratio:nan", "between 1 and 1e9"),
        ("reject_metadata:=x", "key=value"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_rule(bad)
    assert rules_problem(["min_side:1"] * 101) is not None


def test_a_rejecting_match_wins_and_flags_are_noted() -> None:
    rules = [parse_rule("flag:max_aspect_ratio:2"), parse_rule("min_side:32")]
    flagged = evaluate(rules, 300, 100, {})
    assert flagged.reject is None and flagged.tags == {"moderation.flagged": "true"}
    assert flagged.note["flags"][0]["rule"] == "flag:max_aspect_ratio:2"
    rejected = evaluate(rules, 300, 20, {})
    assert rejected.reject is not None and "'min_side:32'" in rejected.reject
    assert evaluate(rules, 100, 100, {}).note == {"outcome": "passed", "rules": 2}


async def test_moderation_step_rejects_with_its_name_as_the_code_after_noting() -> None:
    notes = Notes()
    cfg = MeshConfig(
        pipeline_steps=["exif", "moderation"], moderation_rules=["reject_metadata:exif.make=Canon"]
    )
    ctx = context(jpeg_with_exif(), cfg)
    with pytest.raises(StepRejected) as info:
        await run_steps(cfg.pipeline_steps, ctx, notes)
    assert info.value.code == "moderation" and "reject_metadata:exif.make=Canon" in info.value.message
    assert [s for s, _ in notes.entries] == ["exif", "moderation"]
    assert notes.entries[1][1]["outcome"] == "rejected"


async def test_unknown_steps_are_skipped_and_a_new_step_is_one_registry_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tagger:
        async def run(self, ctx: StepContext) -> StepResult:
            return StepResult(
                metadata={"width_class": "small" if ctx.image.width < 100 else "large"}, tags={"t": "1"}
            )

    monkeypatch.setitem(STEPS, "tagger", Tagger())
    notes = Notes()
    out = await run_steps(["gone", "tagger"], context(jpeg_with_exif()), notes)
    assert out.metadata == {"width_class": "small"} and out.tags == {"t": "1"}
    assert notes.entries[0] == ("gone", {"outcome": "skipped", "reason": "unknown step"})
    assert notes.entries[1] == ("tagger", {"added": ["width_class"], "outcome": "ok"})
