"""Converting an image's layers to eStargz: manifests, indexes, configs and layers."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio

from lazyimage import names
from lazyimage.convert._store import ImageStore, RootManifest
from lazyimage.errors import ConversionError, LazyImageError, NotFoundError, StorageError
from lazyimage.estargz import BuildOptions, BuildResult, build
from lazyimage.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    select_platform,
)

__all__ = [
    "ConvertObserver",
    "ConvertOptions",
    "ConvertResult",
    "LayerReport",
    "ManifestReport",
    "convert_image",
]

_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


class ConvertObserver(Protocol):
    """Told about progress; called from worker threads too, so it must be thread-safe."""

    def add_work(self, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def layer_done(self, report: LayerReport) -> None: ...


class _Silent:
    def add_work(self, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def layer_done(self, report: LayerReport) -> None:
        pass


@dataclass(frozen=True)
class ConvertOptions:
    build: BuildOptions = field(default_factory=BuildOptions)
    platform: Platform = field(default_factory=lambda: Platform("linux", "amd64"))
    all_platforms: bool = False
    layer_concurrency: int = 2
    tmp_dir: Path | None = None


@dataclass(frozen=True)
class LayerReport:
    index: int
    source: Descriptor
    result: Descriptor
    converted: bool
    diff_id: str
    toc_digest: str
    uncompressed_size: int
    prefetch_zone: int


@dataclass(frozen=True)
class ManifestReport:
    platform: str
    source_digest: str
    digest: str
    size: int
    layers: list[LayerReport]

    @property
    def source_size(self) -> int:
        return sum(layer.source.size for layer in self.layers)

    @property
    def result_size(self) -> int:
        return sum(layer.result.size for layer in self.layers)


@dataclass(frozen=True)
class ConvertResult:
    digest: str
    media_type: str
    manifests: list[ManifestReport]

    @property
    def source_size(self) -> int:
        return sum(m.source_size for m in self.manifests)

    @property
    def result_size(self) -> int:
        return sum(m.result_size for m in self.manifests)


async def convert_image(
    source: ImageStore,
    target: ImageStore,
    options: ConvertOptions | None = None,
    observer: ConvertObserver | None = None,
) -> ConvertResult:
    """Convert the image ``source`` names and store the result at ``target``.

    Returns the digest of the stored manifest (or index, with ``all_platforms``).
    """
    opts = options or ConvertOptions()
    job = _Job(source, target, opts, observer or _Silent())
    root = await source.get_root()
    if root.is_index:
        index = Index.parse(root.data, root.media_type)
        if opts.all_platforms:
            return await job.convert_index(index)
        chosen = _select_platform(index, opts.platform, source.name)
        report = await job.convert_manifest(await source.get_manifest(chosen.digest), tag=True)
    else:
        report = await job.convert_manifest(root, tag=True)
    return ConvertResult(report.digest, OCI_MANIFEST, [report])


def _select_platform(index: Index, platform: Platform, image: str) -> Descriptor:
    chosen = select_platform(index, platform)
    if chosen is None:
        available = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
        raise NotFoundError(f"image {image} has no {platform} manifest (available: {available})")
    return chosen


class _Job:
    def __init__(
        self, source: ImageStore, target: ImageStore, opts: ConvertOptions, obs: ConvertObserver
    ) -> None:
        self.source = source
        self.target = target
        self.opts = opts
        self.obs = obs
        self.limiter = anyio.CapacityLimiter(max(1, opts.layer_concurrency))

    async def convert_index(self, index: Index) -> ConvertResult:
        reports: list[ManifestReport] = []
        entries: list[Descriptor] = []
        for desc in index.manifests:
            if desc.annotations.get(_ATTESTATION_ANNOTATION):
                continue  # attestations describe the source manifests, not ours
            report = await self.convert_manifest(
                await self.source.get_manifest(desc.digest), tag=False
            )
            reports.append(report)
            entries.append(
                Descriptor(OCI_MANIFEST, report.digest, report.size, platform=desc.platform)
            )
        data = Index(OCI_INDEX, entries, index.annotations).to_bytes()
        digest = await self.target.put_manifest(data, OCI_INDEX, tag=True)
        return ConvertResult(digest, OCI_INDEX, reports)

    async def convert_manifest(self, root: RootManifest, *, tag: bool) -> ManifestReport:
        manifest = Manifest.parse(root.data, root.media_type)
        config = ImageConfig.parse(await self.source.get_blob(manifest.config.digest))
        diff_ids = config.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise ConversionError(
                f"config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers",
                image=self.source.name,
            )
        self.obs.add_work(sum(layer.size for layer in manifest.layers))
        reports: list[LayerReport | None] = [None] * len(manifest.layers)

        async def run(index: int, layer: Descriptor) -> None:
            async with self.limiter:
                report = await self._layer(index, layer, diff_ids[index])
                reports[index] = report
                self.obs.layer_done(report)

        try:
            async with anyio.create_task_group() as group:
                for index, layer in enumerate(manifest.layers):
                    group.start_soon(run, index, layer)
        except ExceptionGroup as failures:
            # One failed layer cancels the others; report the failure, not the group.
            raise _first_leaf(failures)  # noqa: B904 -- "from" would replace the leaf's cause
        layers = [r for r in reports if r is not None]
        new_config = config.with_diff_ids([r.diff_id for r in layers])
        config_data = new_config.to_bytes()
        config_digest = await self.target.put_blob(config_data)
        new_manifest = Manifest(
            OCI_MANIFEST,
            Descriptor(OCI_CONFIG, config_digest, len(config_data)),
            [r.result for r in layers],
            manifest.annotations,
        )
        data = new_manifest.to_bytes()
        digest = await self.target.put_manifest(data, OCI_MANIFEST, tag=tag)
        return ManifestReport(str(config.platform), root.digest, digest, len(data), layers)

    async def _layer(self, index: int, layer: Descriptor, diff_id: str) -> LayerReport:
        try:
            if names.TOC_DIGEST_ANNOTATION in layer.annotations:
                return await self._keep_layer(index, layer, diff_id)
            return await self._convert_layer(index, layer, diff_id)
        except ConversionError:
            raise
        except LazyImageError as exc:
            raise ConversionError(str(exc), image=self.source.name, layer=layer.digest) from exc
        except OSError as exc:
            # A target store names itself; this is the layer's work in the temp dir, or a
            # source layout's file.
            raise ConversionError(
                self._os_failure(exc), image=self.source.name, layer=layer.digest
            ) from StorageError(str(exc))

    def _os_failure(self, exc: OSError) -> str:
        paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
        if paths:
            return f"{' -> '.join(paths)}: {exc.strerror or exc}"
        where = self.opts.tmp_dir or tempfile.gettempdir()
        return f"working files under {where}: {exc.strerror or exc} (TMPDIR sets where they go)"

    async def _keep_layer(self, index: int, layer: Descriptor, diff_id: str) -> LayerReport:
        """An eStargz layer already: copy it if the target lacks it, keep its descriptor."""
        if not await self.target.has_blob(layer.digest):
            with tempfile.TemporaryDirectory(dir=self.opts.tmp_dir) as tmp:
                path = Path(tmp) / "blob"
                await self.source.download_blob(layer, path)
                await self.target.put_blob_file(path, layer.digest, layer.size)
        self.obs.advance(layer.size)
        uncompressed = layer.annotations.get(names.UNCOMPRESSED_SIZE_ANNOTATION, "0")
        return LayerReport(
            index=index,
            source=layer,
            result=layer,
            converted=False,
            diff_id=diff_id,
            toc_digest=layer.annotations[names.TOC_DIGEST_ANNOTATION],
            uncompressed_size=int(uncompressed) if uncompressed.isdigit() else 0,
            prefetch_zone=0,
        )

    async def _convert_layer(self, index: int, layer: Descriptor, diff_id: str) -> LayerReport:
        with tempfile.TemporaryDirectory(dir=self.opts.tmp_dir, prefix="lazyimage-") as tmp:
            source_path = Path(tmp) / "source"
            result_path = Path(tmp) / "estargz"
            await self.source.download_blob(layer, source_path)
            result = await anyio.to_thread.run_sync(
                self._build, source_path, result_path, layer.size
            )
            if result.source_diff_id != diff_id:
                raise ConversionError(
                    f"uncompressed digest {result.source_diff_id} does not match the config's "
                    f"diff_id {diff_id}",
                    image=self.source.name,
                    layer=layer.digest,
                )
            await self.target.put_blob_file(result_path, result.blob_digest, result.blob_size)
        annotations = {
            names.TOC_DIGEST_ANNOTATION: result.toc_digest,
            names.UNCOMPRESSED_SIZE_ANNOTATION: str(result.uncompressed_size),
            names.SOURCE_DIGEST_ANNOTATION: layer.digest,
            names.SOURCE_SIZE_ANNOTATION: str(layer.size),
        }
        return LayerReport(
            index=index,
            source=layer,
            result=Descriptor(OCI_LAYER_GZIP, result.blob_digest, result.blob_size, annotations),
            converted=True,
            diff_id=result.diff_id,
            toc_digest=result.toc_digest,
            uncompressed_size=result.uncompressed_size,
            prefetch_zone=result.prefetch_zone,
        )

    def _build(self, source: Path, dest: Path, source_size: int) -> BuildResult:
        with open(dest, "wb") as out:
            result = build(source, out, self.opts.build)
        self.obs.advance(source_size)
        return result


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
