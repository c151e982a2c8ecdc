"""The report's "Conditions" section: what each group of figures measured and how, read off the run's plan
and details (never typed in: sizes, batch sizes, EF_RUNTIME, log level and cache state are the run's own).
"""

from __future__ import annotations

from typing import Any

from ops.bench.plan import Plan


def _stack(d: dict[str, Any]) -> list[str]:
    st = d.get("stack", {})
    models = "; ".join(
        f"`{name}`: {m['dim']}-d vectors from {m['input']} pixels, ONNX file {m['onnx_mb']} MB"
        for name, m in d.get("models", {}).items()
    )
    return [
        f"- **The stack** (every figure): the whole mesh on this machine as `make run` starts it, at log level "
        f"`{st.get('log_level', '?')}` (the settings' default: {st.get('log_level_default', '?')}), one "
        "coordinator unless a figure says two, Triton on CPU, its data wiped at the start of the run.",
        f"- **Models**: {models}. The CLIP image tower is built from `{d.get('clip_checkpoint', '?')}` (random "
        "weights: only its cost counts, its vectors mean nothing); EfficientNet-Lite0 has its pretrained "
        "ImageNet weights and is the default model.",
    ]


def _triton(d: dict[str, Any], plan: Plan) -> list[str]:
    if "ort_best_batch_default" not in d:
        return []
    return [
        f"- **`triton_*`, `ort_*`**: {plan.triton_clip_n} (CLIP) and {plan.triton_default_n} "
        f"(EfficientNet-Lite0) images of random pixels, {plan.triton_concurrency} single-image calls of the "
        f"mesh's `Embedder` at a time (it coalesces them into batched Triton requests, as for a coordinator's "
        f"jobs), against in-process ONNX Runtime (every core) on the "
        f"same ONNX file at the best batch of this run's scan (CLIP {d.get('ort_best_batch_clip')}: "
        f"{d.get('ort_batch_scan_clip')}; EfficientNet {d.get('ort_best_batch_default')}: "
        f"{d.get('ort_batch_scan_default')}, images/s by batch). `triton_ratio` is the lower model's."
    ]


def _in_process(d: dict[str, Any], plan: Plan) -> list[str]:
    if "decode_share_of_preprocess_default" not in d:
        return []
    return [
        f"- **`preprocess_per_core_*`**: {plan.preprocess_n} camera JPEGs decoded and preprocessed on one "
        "thread, at full size and (`_draft`) with the JPEG draft the coordinator uses. **`embed_*`, `int8_*`**: "
        "in-process ONNX Runtime, batch 16, fp32 against dynamic int8 quantization; the sibling recall is on "
        f"{plan.sibling_photos} photos and 4 altered copies of each."
    ]


def _ingest(d: dict[str, Any], plan: Plan) -> list[str]:
    if "ingest_n_clip" not in d:
        return []
    w, h = plan.image_size
    out = [
        f"- **`ingest_*`**: {d['ingest_n_clip']} (CLIP) and {d.get('ingest_n_default')} (EfficientNet-Lite0) "
        f"camera-like JPEGs of {w}x{h} (mean {d.get('camera_jpeg_kb_mean')} KB), re-tagged each run. The mesh: "
        f"{plan.uploaders} concurrent uploaders, from the first upload to the last record `done`, with that "
        "model active. The baseline, measured right before each mesh run, is one process doing the same work "
        "per image (`ops/bench/baseline.py`): the coordinator's decode and preprocessing functions with its "
        "arguments, the configured pipeline steps, batched ONNX Runtime on the model file Triton serves, the "
        "indexer's write (DEL + HSET in MULTI, one round trip per batch) into an index of the same schema; "
        "decoding on a thread per core overlapped with inference on every core. It skips only the mesh's "
        "bookkeeping: workflow records, history, events, the object store and the Workflow DB's copy of the "
        "vector. The copy checks are not in either window: the mesh's checker yields to jobs in flight (up to "
        "15 s of lag, `actors/copy_check.py`) and checks the run's images after its last `done`; every run, "
        "baseline or mesh, starts once the checker's queue is empty, and "
        "`ingest_copy_checks_after_s_*` is how long the checks took after each mesh run (untimed)."
    ]
    for key, label in (("clip", "CLIP"), ("default", "EfficientNet-Lite0")):
        b = d.get(f"baseline_{key}")
        if b:
            out.append(
                f"  - baseline {label}: batch {b['batch']} (the scan's best), {b['decode_threads']} decode "
                f"threads, JPEG draft target {b['draft_target']} px, pixel cap {b['max_pixels']}, pipeline "
                f"steps {b['pipeline_steps'] or 'none (the default configuration)'}."
            )
    if "ingest_n_temporal" in d:
        out.append(
            f"- **`ingest_*_temporal`** (`ingest_ratio_temporal`): the EfficientNet-Lite0 ingest "
            f"({d['ingest_n_temporal']} images) with `MESH_WORKFLOW_ENGINE=temporal`: a second stack like the "
            "first (Temporal's dev server with its SQLite file, a Temporal worker in the coordinator's place; "
            "one workflow per image, four activities), the first stack idle meanwhile; the same baseline, run "
            "right before each of its runs. Beside `ingest_ratio_default`, the JetStream figure."
        )
    if "coordinator_scaling_2_over_1" in d:
        out.append(
            "- **`ingest_mesh_images_per_s_default_2coord`**: the EfficientNet ingest again with a second "
            "coordinator process on the same machine."
        )
    return out


def _queries(d: dict[str, Any]) -> list[str]:
    real, ef = d.get("realistic"), d.get("ef_runtime")
    if not real or not ef:
        return []
    first = real.get("first_embed") or {}
    if real["cached"]:
        embed = (
            f"read from the cache (`{real['cache_file']}` under the work directory, keyed by the model file's "
            f"sha256); filling it took {first.get('embed_seconds_total', '?')} s on {first.get('cores', '?')} "
            "cores the first time"
        )
    else:
        embed = (
            f"embedded in this run in {real['embed_s_this_run']} s (the first run only: they are now cached "
            f"in `{real['cache_file']}` under the work directory, keyed by the model file's sha256)"
        )
    hnsw = d.get("hnsw", {})
    differs = ef["chosen"] != ef["config_default"]
    out = [
        f"- **Queries** (`recall_at_10`, `query_*`, `raw_recall_*`): an index of {real['index_vectors']} vectors "
        f"of {real['dim']} dimensions, {real['model']} embeddings (its pretrained ImageNet weights) of "
        "composites of the photos scikit-image ships (random crops, scales, rotations, flips, 2x2 and 1x2 "
        "mosaics, colour, contrast, greyscale, blur, noise; `ops/bench/realistic.py`), made in-process with "
        f"ONNX Runtime on the model's ONNX file and the coordinator's preprocessing; {embed}. HNSW M "
        f"{hnsw.get('m')}, EF_CONSTRUCTION {hnsw.get('ef_construction')}; building the index took "
        f"{real.get('index_build_s')} s. Two disjoint sets of held-out composites (not in the index), "
        f"{real['tuning_queries']} and {real['evaluation_queries']}; exact neighbours by brute force (numpy).",
        f"  - EF_RUNTIME: raw KNN 10 on the tuning set reached recall@10 {ef['tuning_recall_at_10']}; the "
        f"smallest reaching 0.95 is shipped: **{ef['chosen']}**"
        + ("" if ef["target_reached"] else " (none reached 0.95: the largest tried)")
        + (
            f". **It differs from the Config DB default `ef_runtime` = {ef['config_default']}.**"
            if differs
            else ", the Config DB default `ef_runtime`."
        ),
        "  - `raw_recall_at_10_ef*`, `query_raw_p50_ms_ef*`, `query_raw_p99_ms_ef*`: the evaluation set, raw "
        "`FT.SEARCH` KNN 10 through redis-py at each EF_RUNTIME, one query at a time, 10 untimed first.",
        f"  - `recall_at_10`, `query_gateway_*`: `GET /images/{{id}}/similar?k=10` for each evaluation query "
        f"(one client, one at a time) with the Config DB's `ef_runtime` set to {ef['chosen']}; `query_raw_*`, "
        "`raw_recall_at_10`: the same `FT.SEARCH` the gateway sends (KNN 10, the query image excluded by a "
        "pre-filter, the same EF_RUNTIME), through redis-py. `query_p50_overhead_ms` and "
        "`query_p99_overhead_ms` are gateway minus raw, `query_p50_ratio` gateway over raw, run by run. "
        "`query_nats_p50_ms`: the same query through the indexer's `index.query` over NATS.",
    ]
    return out


def _uploads(d: dict[str, Any], plan: Plan) -> list[str]:
    if "upload_jpeg_kb_mean" not in d:
        return []
    log_level = d.get("stack", {}).get("log_level", "?")
    return [
        f"- **`upload_*`**: {plan.upload_n} JPEGs of 640x480 (mean {d['upload_jpeg_kb_mean']} KB), "
        f"{plan.upload_concurrency} concurrent clients, re-tagged each run. The mesh as deployed: log level "
        f"`{log_level}`, the coordinator running and embedding each upload with the active model "
        f"({d.get('upload_active_model')}) while the uploads go on; a pass is timed until its last upload is "
        "answered, and the next pass starts once every upload is `done` and copy-checked. The baseline: a "
        "bare FastAPI endpoint in its own uvicorn process that reads the file, validates it with the "
        "gateway's own `validate_image` and hashes it (`ops/bench/bare.py`).",
        *_upload_cpu(d),
    ]


def _upload_cpu(d: dict[str, Any]) -> list[str]:
    cpu = d.get("upload_cpu_ms_per_upload")
    if not cpu:
        return []
    mesh = {k: v for k, v in cpu.items() if k != "bare"}
    parts = ", ".join(f"{k} {v}" for k, v in mesh.items())
    return [
        f"  - where the CPU goes (ms of CPU per upload, from /proc, during the timed passes): the bare endpoint "
        f"{cpu['bare']}; the mesh {round(sum(mesh.values()), 2)} in all: {parts} (Triton with its backend "
        "stubs; the coordinator and Triton embed the uploads as they arrive, on the same cores)."
    ]


def _profile(d: dict[str, Any], plan: Plan) -> list[str]:
    if "profile_clip_ingest" not in d:
        return []
    return [
        f"- **Profile**: py-spy at 67 Hz on the coordinator and the gateway during a CLIP ingest of "
        f"{plan.profile_n} images (not timed)."
    ]


def conditions(data: dict[str, Any], plan: Plan) -> list[str]:
    """The section's lines, one bullet per group of figures the run produced."""
    d = data["details"]
    return [
        *_stack(d),
        *_triton(d, plan),
        *_in_process(d, plan),
        *_ingest(d, plan),
        *_queries(d),
        *_uploads(d, plan),
        *_profile(d, plan),
    ]
