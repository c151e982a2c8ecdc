"""The `mesh` CLI against the whole real mesh, run as a person would run it (a subprocess): what they see.

One upload set per test, reused across its assertions: the demo's photos (search by image, duplicates,
delete), and a phone-like folder (HEIC, AVIF, a JPEG, a PNG too small for the moderation rule, a broken
file) ingested read-only with ``--wait`` and ``--metadata`` after setting the rule with ``mesh config set``.
"""

from __future__ import annotations

import io
import json
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pillow_heif
import pytest
from PIL import Image

from actors.adapters.config_client import ConfigClient
from actors.settings import Settings
from tests.e2e.test_operations import run_cli
from tests.helpers import upload_id, wait_status, wait_until
from tests.images import distinct_jpegs

MESH = str(Path(sys.executable).parent / "mesh")


@pytest.fixture
def mesh_cli(settings: Settings, tmp_path: Path) -> Any:
    """``mesh ARGS`` as a subprocess, with a state and a cache folder of the test's own."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    async def run(*args: str | Path, limit_s: float = 300) -> tuple[int, str, str]:
        return await run_cli(settings, MESH, *map(str, args), limit_s=limit_s, env=env)

    return run


def encoded(fmt: str, size: tuple[int, int], seed: int) -> bytes:
    """A smooth random picture in ``fmt`` (HEIF through pillow-heif, AVIF through Pillow's plugin)."""
    pillow_heif.register_heif_opener()  # its saver too; this process imports neither the gateway nor the actors
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=70)
    return buf.getvalue()


# --- demo, search by image, duplicates, delete ------------------------------------------------------------
async def test_demo_then_search_by_image_duplicates_and_delete(
    mesh_cli: Any, base_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("skimage")
    from ops import demo

    folder = tmp_path / "demo"
    code, out, err = await mesh_cli("demo", "--dir", folder, "--url", base_url, "--json", limit_s=600)
    assert code == 0, (out, err)
    body = json.loads(out)
    ids: dict[str, str] = body["images"]
    assert sorted(ids) == sorted(demo.file_names())
    assert body["processed"] == {"done": len(ids), "errors": [], "pending": []}
    assert f"mesh similar {ids['chelsea.jpg']}" in body["try"]
    cat, crop = ids["chelsea.jpg"], ids["chelsea-crop.jpg"]

    # a second demo uploads nothing and prints what to try
    code, out, err = await mesh_cli("demo", "--dir", folder, "--url", base_url)
    assert code == 0, err
    assert f"already ingested {len(ids)}" in out and f"mesh similar {cat}" in out and "mesh duplicates" in out

    # search by a local file: the same photo is the best hit; --filter on the demo's metadata
    code, out, err = await mesh_cli(
        "search", "--image", folder / "chelsea.jpg", "-k", "3", "--filter", "source:scikit-image",
        "--url", base_url, "--json",
    )  # fmt: skip
    assert code == 0, err
    hits = json.loads(out)["results"]
    assert hits[0]["image_id"] == cat and {h["image_id"] for h in hits} <= set(ids.values())
    code, out, err = await mesh_cli("search", "--image", folder / "coffee.jpg", "--url", base_url)
    assert code == 0 and ids["coffee.jpg"] in out, err
    code, _, err = await mesh_cli("search", "cat", "--image", folder / "coffee.jpg", "--url", base_url)
    assert code == 2 and "TEXT or --image" in err

    # duplicates: the cat's verified copies (once the checker has seen it), and the groups of the whole
    # library (following every page), each with its tier
    async def cat_checked() -> bool:
        code, out, _ = await mesh_cli("duplicates", cat, "--url", base_url, "--json")
        return code == 0 and json.loads(out)["checked"]

    await wait_until(
        "the copy checker verified the cat's look-alikes", cat_checked, timeout_s=300, every_s=1.0
    )
    code, out, err = await mesh_cli("duplicates", cat, "--url", base_url, "--json")
    hits = json.loads(out)["results"]
    assert crop in {h["image_id"] for h in hits} and {h["tier"] for h in hits} == {"copy"}, hits
    code, out, err = await mesh_cli("duplicates", "--url", base_url, "--json")
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert any({cat, crop} <= set(g["image_ids"]) and g["tier"] == "copy" for g in groups), groups
    code, out, err = await mesh_cli(
        "duplicates", "--mode", "similar", "--limit", "1", "--url", base_url, "--json"
    )
    assert code == 0 and len(json.loads(out)["groups"]) == 1 and json.loads(out)["mode"] == "similar", err
    code, out, err = await mesh_cli("duplicates", "--url", base_url)
    assert code == 0 and "duplicate group" in out and "tier copy" in out and crop in out, err

    # delete: then status (and a second delete) say not found
    code, out, err = await mesh_cli("delete", crop, "no-such-image", "--url", base_url, "--json")
    assert code == 3, (out, err)
    assert json.loads(out) == {"deleted": [crop], "not_found": ["no-such-image"], "failed": []}
    code, _, err = await mesh_cli("status", crop, "--url", base_url)
    assert code == 3 and "no image" in err
    code, out, _ = await mesh_cli("delete", crop, "--url", base_url)
    assert code == 3 and f"not found: {crop}" in out


# --- config, ingest of a read-only folder with HEIC and AVIF, --wait, --metadata --------------------------
async def test_config_then_a_read_only_phone_folder_with_heic_and_avif(
    mesh_cli: Any, client: httpx.AsyncClient, base_url: str, tmp_path: Path, ops_nc: Any
) -> None:
    config = ConfigClient(ops_nc)
    before = await config.get()
    folder = tmp_path / "phone"
    folder.mkdir()
    files = {
        "IMG_0001.HEIC": encoded("HEIF", (96, 64), 7601),
        "IMG_0002.avif": encoded("AVIF", (96, 64), 7602),
        "IMG_0003.jpg": distinct_jpegs(1, seed=7603)[0],
        "tiny.png": encoded("PNG", (16, 16), 7604),  # under the min_side rule set below
        "broken.jpg": b"not an image at all",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o444)
    folder.chmod(0o555)  # read-only (root ignores the bits: the folder's listing is compared too)
    listing = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    try:
        code, out, err = await mesh_cli("config", "get", "--json")
        assert code == 0, err
        assert json.loads(out)["active_model"] == "efficientnet_lite0"
        code, out, err = await mesh_cli("config", "get", "max_k")
        assert code == 0 and "max_k" in out and str(before.max_k) in out, err
        code, _, err = await mesh_cli("config", "get", "no_such_key")
        assert code == 2 and "no config key 'no_such_key'" in err

        # refused values: the config actor's reason, exit 2, nothing changed
        code, _, err = await mesh_cli("config", "set", "moderation_rules", '["min_side:tiny"]')
        assert code == 2 and "is not a number" in err, err
        code, _, err = await mesh_cli("config", "set", "pipeline_steps", '["exif", "watermark"]')
        assert code == 2 and "unknown step 'watermark'" in err, err
        assert (await config.get()).pipeline_steps == before.pipeline_steps

        code, out, err = await mesh_cli("config", "set", "moderation_rules", '["min_side:24"]', "--json")
        assert code == 0, err
        assert json.loads(out) == {
            "key": "moderation_rules",
            "value": ["min_side:24"],
            "previous": before.moderation_rules,
        }
        code, out, err = await mesh_cli("config", "set", "pipeline_steps", '["moderation"]')
        assert code == 0 and 'pipeline_steps: [] -> ["moderation"]' in out, (out, err)

        code, out, err = await mesh_cli(
            "ingest", folder, "--wait", "--metadata", "trip=alps", "--metadata", "roll=7",
            "--url", base_url, "--json",
        )  # fmt: skip
        assert code == 1, (out, err)  # a refused file and an image in error
        body = json.loads(out)
        assert body["accepted"] == 4 and [r["path"] for r in body["refused"]] == ["broken.jpg"]
        assert body["processed"]["done"] == 3 and body["processed"]["pending"] == []
        (error,) = body["processed"]["errors"]
        assert (error["path"], error["code"]) == ("tiny.png", "moderation") and "min_side:24" in error[
            "message"
        ]

        ids = body["images"]
        records = await wait_status(client, [ids[n] for n in ("IMG_0001.HEIC", "IMG_0002.avif")], {"done"})
        heic, avif = records[ids["IMG_0001.HEIC"]], records[ids["IMG_0002.avif"]]
        assert (heic["content_type"], heic["width"], heic["height"]) == ("image/heic", 96, 64)
        assert (avif["content_type"], avif["width"], avif["height"]) == ("image/avif", 96, 64)
        assert heic["metadata"]["trip"] == "alps" and heic["metadata"]["roll"] == 7
        assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == listing
        assert Path(body["state"]).parent == tmp_path / "state" / "mesh"

        # a rerun uploads nothing, and a person reads the error with its code and message
        code, out, err = await mesh_cli("ingest", folder, "--wait", "--url", base_url)
        assert code == 1, (out, err)
        assert "accepted 0, duplicates 0, already ingested 4, refused 1" in out
        assert "error: tiny.png" in out and "moderation" in out and "min_side:24" in out
    finally:
        await config.set("pipeline_steps", before.pipeline_steps)
        await config.set("moderation_rules", before.moderation_rules)
        folder.chmod(stat.S_IRWXU)


async def test_heic_and_avif_are_typed_by_their_bytes_not_their_name(client: httpx.AsyncClient) -> None:
    heic = await upload_id(client, encoded("HEIF", (64, 64), 7701), name="holiday.jpg")  # sent as image/jpeg
    avif = await upload_id(client, encoded("AVIF", (64, 64), 7702), name="holiday.png")
    records = await wait_status(client, [heic, avif], {"done"})
    assert records[heic]["content_type"] == "image/heic"
    assert records[avif]["content_type"] == "image/avif"


# --- models, version --------------------------------------------------------------------------------------
async def test_models_lists_the_active_one_and_a_switch_says_what_happened(
    mesh_cli: Any, base_url: str
) -> None:
    code, out, err = await mesh_cli("models", "--url", base_url, "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["active"] == "efficientnet_lite0"
    assert [m["name"] for m in body["models"] if m["active"]] == ["efficientnet_lite0"]
    code, out, err = await mesh_cli("models", "--url", base_url)
    assert code == 0 and "active model: efficientnet_lite0" in out, err

    code, out, err = await mesh_cli("models", "switch", "efficientnet_lite0", "--wait", "--url", base_url)
    assert code == 0 and "already the active model" in out, (out, err)
    code, _, err = await mesh_cli("models", "switch", "no_such_model", "--url", base_url)
    assert code == 1 and "no_such_model" in err and "unknown_model" in err

    code, out, err = await mesh_cli("--version")
    assert code == 0 and out.startswith("mesh ") and out.strip() != "mesh", (out, err)
