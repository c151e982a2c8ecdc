"""Every benchmark, in an order that keeps them from disturbing each other, against one bench stack.

Each ratio is computed run by run (mesh run i over the baseline run i measured right before it), so a noisy
neighbour on this 2-core machine moves both sides of a ratio together; the figure is the median of the runs
with their min and max.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import redis

from actors.contract import MeshConfig
from actors.settings import Settings
from ops.bench import baseline, ingest, labels, upload
from ops.bench import inference as inf
from ops.bench.cpu import cpu_seconds, spent
from ops.bench.data import cached_jpegs, photo_jpegs, sized_jpegs, tagged
from ops.bench.plan import Plan
from ops.bench.profile import Profiler
from ops.bench.recall import realistic_queries
from ops.bench.stack import BenchStack
from ops.bench.stats import Results, ratios

BASELINE_PREFIX = "benchbase"  # the in-process baseline's index, beside the mesh's own
# the processes whose CPU the upload step accounts for during the mesh's passes
UPLOAD_CPU = ("gateway", "coordinator", "triton", "indexer", "config", "nats", "redis", "s3")
__all__ = ["STEPS", "Results", "Runner"]


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


STEPS = (
    "triton",
    "in_process",
    "ingest",
    "temporal",
    "scaling",
    "profile",
    "queries",
    "labels",
    "copies",
    "uploads",
)  # in the order they run


class Runner:
    def __init__(
        self, plan: Plan, bench: BenchStack, repository: Path, work_dir: Path, only: set[str] | None = None
    ) -> None:
        self.only = only  # step names (STEPS); None: every step
        self.plan = plan
        self.bench = bench
        self.repository = repository
        self.work_dir = work_dir
        self.res = Results()
        self.clip = f"{bench.settings.clip_prefix}_image"
        self.default = "efficientnet_lite0"
        self.models: dict[str, ingest.ModelFiles] = {}
        self.camera: list[bytes] = []

    async def run(self) -> Results:
        p = self.plan
        # the benchmarks plant vectors without records and switch models at will: no reconciler behind them
        await self.bench.set_config("reconcile_period_s", 0)
        self.res.details["stack"] = {
            "log_level": self.bench.settings.log_level,
            "log_level_default": Settings.model_fields["log_level"].default,
        }
        for name in (self.clip, self.default):
            self.models[name] = m = await ingest.model_files(self.bench, self.repository, name)
            self.res.details.setdefault("models", {})[name] = {
                "dim": m.dim,
                "input": f"{m.spec.crop}x{m.spec.crop}",
                "onnx_mb": round(m.onnx.stat().st_size / 2**20, 1),
            }
        self.res.details["clip_checkpoint"] = self.bench.settings.clip_checkpoint or "random:tiny"
        n_img = max(p.ingest_clip_n, p.ingest_default_n, p.profile_n if p.profile else 0)
        _say(f"making {n_img} images of {p.image_size[0]}x{p.image_size[1]}")
        w, h = p.image_size
        self.camera = cached_jpegs(
            self.work_dir / "images" / f"camera-{w}x{h}-{n_img}.bin", lambda: photo_jpegs(n_img, p.image_size)
        )
        self.res.details["camera_jpeg_kb_mean"] = round(
            float(np.mean([len(d) for d in self.camera])) / 1024, 1
        )
        for step in (
            self.triton,
            self.in_process,
            self.ingest,
            self.temporal,
            self.scaling,
            self.profile,
            self.queries,
            self.labels,
            self.copies,
            self.uploads,
        ):
            if self.only is not None and step.__name__ not in self.only:
                continue
            t0 = time.perf_counter()
            _say(f"{step.__name__} ...")
            await step()
            self.res.seconds[step.__name__] = round(time.perf_counter() - t0, 1)
        return self.res

    # --- 2. Triton vs in-process ONNX Runtime ----------------------------------------------------------
    async def triton(self) -> None:
        p = self.plan
        for name, n, key in (
            (self.clip, p.triton_clip_n, "clip"),
            (self.default, p.triton_default_n, "default"),
        ):
            m = self.models[name]
            px = inf.random_pixels(m, n)
            session = ingest.ort_session(m.onnx)
            scan = inf.best_batch(session, px)
            best = max(scan, key=lambda b: scan[b])
            self.res.details[f"ort_batch_scan_{key}"] = {str(b): round(v, 2) for b, v in scan.items()}
            tri, ort = [], []
            for _ in range(p.reps):
                ort.append(inf.ort_throughput(session, px, best))
                tri.append(await inf.triton_throughput(self.bench, m, px, p.triton_concurrency))
            del session
            self.res.details[f"ort_best_batch_{key}"] = best
            self.res.add(f"triton_images_per_s_{key}", tri, "images/s")
            self.res.add(f"ort_images_per_s_{key}", ort, "images/s")
            self.res.add(f"triton_ratio_{key}", ratios(tri, ort))

    # --- 6. models: fp32 vs int8, preprocessing per core ----------------------------------------------
    async def in_process(self) -> None:
        from ops.photos import PHOTOS, sibling_set

        p = self.plan
        imgs = self.camera[: p.preprocess_n]
        siblings = sibling_set(PHOTOS[: p.sibling_photos])
        groups = [g for g, _, _ in siblings]
        sib_bytes = [b for _, _, b in siblings]
        for name, key in ((self.clip, "clip"), (self.default, "default")):
            m = self.models[name]
            self.res.add(
                f"preprocess_per_core_{key}",
                [inf.preprocess_rate(m, imgs) for _ in range(p.reps)],
                "images/s",
            )
            self.res.add(
                f"preprocess_per_core_draft_{key}",
                [inf.preprocess_rate(m, imgs, draft=True) for _ in range(p.reps)],
                "images/s",
            )
            self.res.details[f"decode_share_of_preprocess_{key}"] = round(inf.decode_share(m, imgs), 3)
            # int8 Conv (EfficientNet) runs as ConvInteger, far slower on CPU: fewer images keep it short
            px = inf.random_pixels(m, 16 if key == "default" else max(16, p.triton_clip_n // 2))
            fp32 = ingest.ort_session(m.onnx)
            t0 = time.perf_counter()
            q8_path = inf.quantized(m, self.work_dir / "int8")
            self.res.details[f"int8_quantize_s_{key}"] = round(time.perf_counter() - t0, 1)
            int8 = ingest.ort_session(q8_path)
            f_rates, q_rates = [], []
            for _ in range(p.reps):
                f_rates.append(inf.ort_throughput(fp32, px, 16))
                q_rates.append(inf.ort_throughput(int8, px, 16))
            self.res.add(f"embed_fp32_images_per_s_{key}", f_rates, "images/s")
            self.res.add(f"embed_int8_images_per_s_{key}", q_rates, "images/s")
            self.res.add(f"int8_speedup_{key}", ratios(q_rates, f_rates))
            v32 = inf.embed_all(fp32, m, sib_bytes)
            v8 = inf.embed_all(int8, m, sib_bytes)
            cos = np.sum(v32 * v8, axis=1) / (np.linalg.norm(v32, axis=1) * np.linalg.norm(v8, axis=1))
            self.res.details[f"sibling_recall_at_4_fp32_{key}"] = round(
                inf.sibling_recall_at_4(v32, groups), 4
            )
            self.res.details[f"sibling_recall_at_4_int8_{key}"] = round(
                inf.sibling_recall_at_4(v8, groups), 4
            )
            self.res.details[f"int8_vs_fp32_cosine_min_{key}"] = round(float(cos.min()), 4)

    # --- 1. ingest ------------------------------------------------------------------------------------
    def _best_batch(self, key: str) -> int:
        """The batch size the scan of this run found best for the model (the triton step scans first)."""
        if f"ort_best_batch_{key}" not in self.res.details:
            m = self.models[self.clip if key == "clip" else self.default]
            n = self.plan.triton_clip_n if key == "clip" else self.plan.triton_default_n
            scan = inf.best_batch(ingest.ort_session(m.onnx), inf.random_pixels(m, n))
            self.res.details[f"ort_batch_scan_{key}"] = {str(b): round(v, 2) for b, v in scan.items()}
            self.res.details[f"ort_best_batch_{key}"] = max(scan, key=lambda b: scan[b])
        return int(self.res.details[f"ort_best_batch_{key}"])

    async def _ingest_model(
        self, name: str, key: str, n: int, bench: BenchStack | None = None, batch_key: str = ""
    ) -> None:
        """``ingest_*_{key}``: ``name``'s ingest through ``bench`` (the bench stack unless given) against the
        equal-work baseline, run by run; ``batch_key``: whose batch scan the baseline takes (``key``'s)."""
        p = self.plan
        m = self.models[name]
        bench = bench or self.bench
        s = bench.settings
        await bench.set_config("active_model", name)
        cfg = await self._config(bench)  # the mesh's own configuration: the baseline does the work it says
        batch = self._best_batch(batch_key or key)
        self.res.details[f"baseline_{key}"] = {
            "batch": batch,
            "decode_threads": os.cpu_count(),
            "pipeline_steps": list(cfg.pipeline_steps),
            "max_pixels": cfg.max_pixels,
            "draft_target": m.spec.resize,
        }
        key_prefix = await baseline.ensure_baseline_index(s.redis_server_url, BASELINE_PREFIX, name, m.dim)
        images = self.camera[:n]
        session = ingest.ort_session(m.onnx)
        r = redis.Redis.from_url(s.redis_server_url)

        put = baseline.s3_put(s, BASELINE_PREFIX)

        def run_baseline(imgs: list[bytes], tag: str) -> float:
            return baseline.baseline_ingest(
                imgs, m.spec, cfg, session, r, key_prefix, batch, tag, labels=m.labels, put=put
            )

        # warm-up: model config caches, gRPC channels, ORT arenas (not timed)
        run_baseline(images[:8], f"{key}-warm")
        await ingest.mesh_ingest(bench, images[:8], f"{key}-warm", p.uploaders)
        base, mesh, stages, checks = [], [], [], []
        for rep in range(p.reps):
            base.append(
                run_baseline([tagged(d, f"{key}-{rep}-{i}") for i, d in enumerate(images)], f"{key}-{rep}")
            )
            run = await ingest.mesh_ingest(bench, images, f"{key}-{rep}", p.uploaders)
            if run.errors:
                raise RuntimeError(f"{run.errors} images ended in error during the {key} ingest")
            mesh.append(run.images_per_s)
            checks.append(run.checks_s)
            stages.append(run.stages | {"_upload_s": run.upload_seconds, "_wall_s": run.seconds})
        r.close()
        self.res.add(f"ingest_copy_checks_after_s_{key}", checks, "s")
        self.res.add(f"ingest_baseline_images_per_s_{key}", base, "images/s")
        self.res.add(f"ingest_mesh_images_per_s_{key}", mesh, "images/s")
        self.res.add(f"ingest_ratio_{key}", ratios(mesh, base))
        self.res.details[f"stages_{key}"] = stages[len(stages) // 2]
        self.res.details[f"ingest_n_{key}"] = n

    async def ingest(self) -> None:
        await self._ingest_model(self.clip, "clip", self.plan.ingest_clip_n)
        await self._ingest_model(self.default, "default", self.plan.ingest_default_n)

    async def temporal(self) -> None:
        """``ingest_ratio_temporal``: the default model's ingest with Temporal as the workflow engine, on a
        second stack like the first (which idles meanwhile), against the same baseline, run by run."""
        s = self.bench.settings
        other = await asyncio.to_thread(
            BenchStack.start,
            self.work_dir / "stack-temporal",
            workflow_engine="temporal",
            models=s.models,
            clip_checkpoint=s.clip_checkpoint,
            model_repository=s.model_repository,
        )
        try:
            await other.set_config("reconcile_period_s", 0)
            n = self.plan.ingest_default_n
            await self._ingest_model(self.default, "temporal", n, bench=other, batch_key="default")
        finally:
            other.close()

    # --- 5. two coordinators ------------------------------------------------------------------------------
    async def scaling(self) -> None:
        p = self.plan
        images = self.camera[: p.ingest_default_n]
        self.bench.add_coordinator()
        try:
            runs = []
            for rep in range(p.reps):
                run = await ingest.mesh_ingest(self.bench, images, f"two-{rep}", p.uploaders)
                runs.append(run.images_per_s)
                last = run
            self.res.add("ingest_mesh_images_per_s_default_2coord", runs, "images/s")
            self.res.details["stages_default_2coord"] = last.stages | {
                "_upload_s": last.upload_seconds,
                "_wall_s": last.seconds,
            }
        finally:
            self.bench.remove_coordinators()
        one = self.res.figures["ingest_mesh_images_per_s_default"]
        self.res.details["coordinator_scaling_2_over_1"] = round(
            self.res.figures["ingest_mesh_images_per_s_default_2coord"].median / one.median, 3
        )

    # --- where the time goes (not timed: py-spy's sampling costs a little) ---------------------------------
    async def profile(self) -> None:
        if not self.plan.profile:
            return
        await self.bench.set_config("active_model", self.clip)
        images = self.camera[: self.plan.profile_n]
        targets = {n: pid for n in ("coordinator", "gateway") if (pid := self.bench.pid(n))}
        with Profiler(targets, self.work_dir / "profiles") as prof:
            await ingest.mesh_ingest(self.bench, images, "profile", self.plan.uploaders)
        self.res.details["profile_clip_ingest"] = prof.summary()
        await self.bench.set_config("active_model", self.default)

    # --- 3. queries ---------------------------------------------------------------------------------------
    async def queries(self) -> None:
        cfg = await self._config()
        m = self.models[self.default]
        await realistic_queries(self.bench, self.plan, self.res, m, self.work_dir / "vectors", cfg)

    # --- labels: text search on the default model, and the step's cost ------------------------------------
    async def labels(self) -> None:
        await self.bench.set_config("active_model", self.default)
        p = self.plan
        found = await labels.measure(
            self.bench, self.models[self.default], p.label_copies, p.label_distractor_copies
        )
        self.res.details["labels"] = found
        self.res.add("label_precision", [found["precision"]])
        self.res.add("label_recall", [found["recall"]])

    # --- copies apart from look-alikes: the labelled pair set in-process, the checker's cost in the mesh ----
    async def copies(self) -> None:
        from ops.bench import copies as copy_bench

        size: copy_bench.Size = "reduced" if self.plan.copies_size == "reduced" else "full"
        found = await asyncio.to_thread(copy_bench.run, size)
        tiers = found["evaluation"]["tiers"]
        self.res.details["copies"] = found
        self.res.add("copy_precision", [tiers["copy_tier"]["all"]["precision"]])
        self.res.add("copy_recall", [tiers["copy_tier"]["all"]["recall"]])
        self.res.add("cosine_best_precision", [tiers["cosine_best"]["all"]["precision"]])
        # the checker in the mesh, over everything the earlier steps ingested (their copies and look-alikes)
        self.res.details["copy_check_mesh"] = self.bench.copy_check_times()

    async def _config(self, bench: BenchStack | None = None) -> MeshConfig:
        from actors.adapters.config_client import ConfigClient
        from actors.runtime import connect_nats

        nc = await connect_nats((bench or self.bench).settings, "ops", name="bench")
        try:
            return await ConfigClient(nc).get()
        finally:
            await nc.close()

    # --- 4. uploads ---------------------------------------------------------------------------------------
    async def uploads(self) -> None:
        """The stack as deployed: the coordinator runs and embeds every upload (the active model) while the
        uploads go on; a mesh pass ends when its uploads are answered, and the next bare pass starts once
        every one of them is done, so no backlog runs into the baseline."""
        p = self.plan
        images = cached_jpegs(
            self.work_dir / "images" / f"upload-100k-{p.upload_n}.bin", lambda: sized_jpegs(p.upload_n)
        )
        self.res.details["upload_jpeg_kb_mean"] = round(float(np.mean([len(d) for d in images])) / 1024, 1)
        self.res.details["upload_active_model"] = (await self._config()).active_model
        bare, mesh = [], []
        mesh_cpu: dict[str, float] = {}
        bare_cpu = 0.0
        with upload.bare_server() as (bare_url, bare_pid):
            for rep in range(p.reps):
                before = cpu_seconds({"bare": bare_pid})
                rate, _ = await upload.upload_rate(
                    bare_url, "/upload", images, f"bare-{rep}", p.upload_concurrency
                )
                bare_cpu += spent(before, cpu_seconds({"bare": bare_pid}))["bare"]
                bare.append(rate)
                pids = {n: pid for n in UPLOAD_CPU if (pid := self.bench.pid(n))}
                before = cpu_seconds(pids)
                rate, ids = await upload.upload_rate(
                    self.bench.base_url, "/images/upload", images, f"up-{rep}", p.upload_concurrency
                )
                for n, sec in spent(before, cpu_seconds(pids)).items():
                    mesh_cpu[n] = mesh_cpu.get(n, 0.0) + sec
                mesh.append(rate)
                await upload.wait_processed(self.bench, ids)
        uploads = p.reps * (len(images) + 1)  # each pass has a warm-up upload
        self.res.details["upload_cpu_ms_per_upload"] = {
            "bare": round(1000 * bare_cpu / uploads, 2),
            **{
                n: round(1000 * sec / uploads, 2)
                for n, sec in sorted(mesh_cpu.items(), key=lambda kv: -kv[1])
            },
        }
        self.res.add("upload_bare_per_s", bare, "uploads/s")
        self.res.add("upload_mesh_per_s", mesh, "uploads/s")
        self.res.add("upload_ratio", ratios(mesh, bare))
