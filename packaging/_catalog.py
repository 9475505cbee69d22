"""The product catalog: one YAML file describing each product a vendor sells.

Imported by the scripts beside it (their own directory is on sys.path); never a package, see
DEVELOPERS.md. Every check names the field to fix, as `products[0].prices_per_hour.batch`.

    products:
      - name: minilm-embeddings            # SageMaker model package name, <= 63 chars
        title: all-MiniLM-L6-v2 text embeddings
        model_dir: "@embedded"             # a path (relative to this file), or the embedded default model
        served_name: all-MiniLM-L6-v2
        kind: embedding                    # or reranker
        tasks: {retrieval.query: "query: "}  # optional, written into searchbox.json
        instance_types:
          realtime: [ml.m5.xlarge, ml.g5.xlarge]
          batch: [ml.m5.xlarge]
          recommended: {realtime: ml.g5.xlarge, batch: ml.m5.xlarge}
        prices_per_hour:                   # USD per instance-hour, every instance type above
          realtime: {ml.m5.xlarge: 0.10, ml.g5.xlarge: 0.50}
          batch: {ml.m5.xlarge: 0.10}
        free_trial_days: 30                # 0, or 5..31
        regions: [us-east-1, eu-west-1]
        description: docs/description.md
        eula: docs/eula.md
        remote_code: {other-org/repo: path/to/checkout}   # optional: where trust_remote_code files live
        azure: {instance_type: Standard_NC4as_T4_v3, gpus_per_instance: 1, surcharge_per_gpu_hour: 0.40}
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from model_handlers import kinds

EMBEDDED = "@embedded"
# SageMaker's own rule for ModelPackageName (botocore service model, EntityName).
NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
NAME_MAX = 63
# Azure ML online endpoint names: 3-32 chars, a letter first, letters, digits and hyphens.
AZURE_ENDPOINT_PATTERN = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]")
REGION_PATTERN = re.compile(r"[a-z]{2}(-gov)?-[a-z]+-\d")
# The AWS Marketplace seller guide ("Machine learning product pricing", Free trial): 5-31 days.
FREE_TRIAL_RANGE = (5, 31)
MODES = ("realtime", "batch")


class CatalogError(ValueError):
    """The catalog is wrong; the message starts with the field to fix."""


@functools.lru_cache(maxsize=1)
def sagemaker_service_model():
    """botocore's bundled SageMaker service model: the machine-readable API the cloud publishes."""
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


@functools.lru_cache(maxsize=1)
def instance_type_enums() -> dict[str, frozenset[str]]:
    model = sagemaker_service_model()
    return {
        "realtime": frozenset(model.shape_for("ProductionVariantInstanceType").enum),
        "batch": frozenset(model.shape_for("TransformInstanceType").enum),
    }


@dataclass(frozen=True)
class AzureOffer:
    instance_type: str
    gpus_per_instance: int
    surcharge_per_gpu_hour: float
    instance_count: int = 1
    endpoint_name: str = ""


@dataclass(frozen=True)
class Product:
    name: str
    title: str
    model_dir: Path
    served_name: str
    kind: str
    tasks: Mapping[str, Any]
    instance_types: Mapping[str, tuple[str, ...]]
    recommended: Mapping[str, str]
    prices_per_hour: Mapping[str, Mapping[str, float]]
    free_trial_days: int
    regions: tuple[str, ...]
    description_path: Path
    eula_path: Path
    remote_code: Mapping[str, Path] = field(default_factory=dict)
    azure: AzureOffer | None = None

    @property
    def model_kind(self) -> kinds.Kind:
        """The kind's registry entry: its CSV row, samples and operations."""
        return kinds.named(self.kind)

    @property
    def description(self) -> str:
        return self.description_path.read_text(encoding="utf-8")

    @property
    def short_description(self) -> str:
        """The first paragraph of the description, one line, at most 1024 chars (SageMaker's limit)."""
        paragraphs = [p for p in self.description.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]
        first = " ".join((paragraphs[0] if paragraphs else self.title).split())
        return first[:1024]


def load_catalog(path: str | Path) -> list[Product]:
    """Read and check a catalog file.

    Raises:
        CatalogError: naming the field to fix.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"--catalog: {path} " + ("is a directory, not a file" if path.is_dir() else "does not exist")
                           + f"; start from {Path(__file__).with_name('catalog.example.yaml')}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    return parse_catalog(raw, base_dir=path.parent)


def parse_catalog(raw: Any, *, base_dir: Path) -> list[Product]:
    if not isinstance(raw, dict) or not isinstance(raw.get("products"), list) or not raw["products"]:
        raise CatalogError("products: the catalog must hold a non-empty list under 'products'")
    products = [_product(entry, f"products[{i}]", base_dir) for i, entry in enumerate(raw["products"])]
    seen: set[str] = set()
    for i, product in enumerate(products):
        if product.name in seen:
            raise CatalogError(f"products[{i}].name: {product.name!r} is used twice")
        seen.add(product.name)
    return products


def find_product(products: list[Product], name: str | None) -> Product:
    """The product called `name`; the only one when `name` is None."""
    if name is None:
        if len(products) == 1:
            return products[0]
        raise CatalogError(f"--product: the catalog holds {len(products)} products, name one of "
                           + ", ".join(p.name for p in products))
    for product in products:
        if product.name == name:
            return product
    raise CatalogError(f"--product: no product {name!r}; the catalog holds " + ", ".join(p.name for p in products))


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{where}: must be a non-empty string")
    if len(name) > NAME_MAX:
        raise CatalogError(f"{where}: {name!r} is {len(name)} characters; SageMaker allows at most {NAME_MAX}")
    if not NAME_PATTERN.fullmatch(name):
        raise CatalogError(f"{where}: {name!r} must match {NAME_PATTERN.pattern} "
                           "(letters, digits and inner hyphens only)")
    return name


def _product(entry: Any, where: str, base_dir: Path) -> Product:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: each product must be a mapping")
    known = {"name", "title", "model_dir", "served_name", "kind", "tasks", "instance_types", "prices_per_hour",
             "free_trial_days", "regions", "description", "eula", "remote_code", "azure"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise CatalogError(f"{where}.{unknown[0]}: unknown field; known fields are {', '.join(sorted(known))}")
    name = check_name(_required(entry, "name", where), f"{where}.name")
    kind = entry.get("kind", kinds.registered()[-1].name)  # the catch-all kind, as for a bare directory
    if kind not in kinds.names():
        raise CatalogError(f"{where}.kind: {kind!r} is not one of {', '.join(sorted(kinds.names()))}")
    tasks = entry.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise CatalogError(f"{where}.tasks: must map task names to a prompt string or {{prompt, adapter}}")
    for task, spec in tasks.items():
        if not (isinstance(spec, str) or (isinstance(spec, dict) and spec and set(spec) <= {"prompt", "adapter"})):
            raise CatalogError(f"{where}.tasks.{task}: must be a prompt string or a mapping with prompt and/or adapter")
    instance_types, recommended = _instance_types(_required(entry, "instance_types", where), f"{where}.instance_types")
    prices = _prices(_required(entry, "prices_per_hour", where), instance_types, f"{where}.prices_per_hour")
    trial = entry.get("free_trial_days", 0)
    if not isinstance(trial, int) or isinstance(trial, bool) or not (
            trial == 0 or FREE_TRIAL_RANGE[0] <= trial <= FREE_TRIAL_RANGE[1]):
        raise CatalogError(f"{where}.free_trial_days: {trial!r} must be 0 (no trial) or "
                           f"{FREE_TRIAL_RANGE[0]}..{FREE_TRIAL_RANGE[1]} days")
    regions = _required(entry, "regions", where)
    if not isinstance(regions, list) or not regions:
        raise CatalogError(f"{where}.regions: must be a non-empty list of AWS regions")
    for i, region in enumerate(regions):
        if not isinstance(region, str) or not REGION_PATTERN.fullmatch(region):
            raise CatalogError(f"{where}.regions[{i}]: {region!r} is not an AWS region name like us-east-1")
    remote_code = entry.get("remote_code") or {}
    if not isinstance(remote_code, dict):
        raise CatalogError(f"{where}.remote_code: must map repository ids to local directories")
    model_dir = _required(entry, "model_dir", where)
    return Product(
        name=name,
        title=str(entry.get("title") or name),
        model_dir=_model_dir(model_dir, base_dir, f"{where}.model_dir"),
        served_name=str(entry.get("served_name") or name),
        kind=kind,
        tasks=tasks,
        instance_types=instance_types,
        recommended=recommended,
        prices_per_hour=prices,
        free_trial_days=trial,
        regions=tuple(regions),
        description_path=_existing_file(_required(entry, "description", where), base_dir, f"{where}.description"),
        eula_path=_existing_file(_required(entry, "eula", where), base_dir, f"{where}.eula"),
        remote_code={str(repo): _directory(p, base_dir, f"{where}.remote_code.{repo}")
                     for repo, p in remote_code.items()},
        azure=_azure(entry.get("azure"), name, f"{where}.azure"),
    )


def _required(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if entry.get(key) in (None, ""):
        raise CatalogError(f"{where}.{key}: missing")
    return entry[key]


def _instance_types(raw: Any, where: str) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must hold 'realtime' and 'batch' lists")
    enums = instance_type_enums()
    types: dict[str, tuple[str, ...]] = {}
    for mode in MODES:
        listed = raw.get(mode)
        if not isinstance(listed, list) or not listed:
            raise CatalogError(f"{where}.{mode}: must be a non-empty list of SageMaker instance types")
        for i, instance_type in enumerate(listed):
            if instance_type not in enums[mode]:
                hint = " (a batch transform type)" if mode == "realtime" and instance_type in enums["batch"] else ""
                raise CatalogError(f"{where}.{mode}[{i}]: unknown instance type {instance_type!r}{hint}; "
                                   f"SageMaker's service model lists e.g. {', '.join(sorted(enums[mode])[:4])}, ...")
        if len(set(listed)) != len(listed):
            raise CatalogError(f"{where}.{mode}: lists an instance type twice")
        types[mode] = tuple(listed)
    recommended_raw = raw.get("recommended") or {}
    if not isinstance(recommended_raw, dict):
        raise CatalogError(f"{where}.recommended: must map realtime/batch to one of the listed types")
    recommended = {}
    for mode in MODES:
        choice = recommended_raw.get(mode, types[mode][0])
        if choice not in types[mode]:
            raise CatalogError(f"{where}.recommended.{mode}: {choice!r} is not in {where}.{mode}")
        recommended[mode] = choice
    return types, recommended


def _prices(raw: Any, types: Mapping[str, tuple[str, ...]], where: str) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must hold 'realtime' and 'batch' price maps")
    prices: dict[str, dict[str, float]] = {}
    for mode in MODES:
        table = raw.get(mode)
        if not isinstance(table, dict):
            raise CatalogError(f"{where}.{mode}: must map each {mode} instance type to a USD hourly price")
        for instance_type in types[mode]:
            if instance_type not in table:
                raise CatalogError(f"{where}.{mode}.{instance_type}: no price for this instance type; "
                                   "every supported instance type needs one (0 for free)")
            price = table[instance_type]
            if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
                raise CatalogError(f"{where}.{mode}.{instance_type}: price must be a number >= 0, not {price!r}")
        extra = sorted(set(table) - set(types[mode]))
        if extra:
            raise CatalogError(f"{where}.{mode}.{extra[0]}: priced but not listed in instance_types.{mode}")
        prices[mode] = {t: round(float(table[t]), 3) for t in types[mode]}
    return prices


def _model_dir(value: Any, base_dir: Path, where: str) -> Path:
    if value == EMBEDDED:
        from container.settings import SettingsError, embedded_model_dir

        try:
            return embedded_model_dir()
        except SettingsError as exc:
            raise CatalogError(f"{where}: {exc}") from exc
    return _directory(value, base_dir, where)


def _directory(value: Any, base_dir: Path, where: str) -> Path:
    path = (base_dir / str(value)).resolve()
    if not path.is_dir():
        raise CatalogError(f"{where}: {path} " + ("is not a directory" if path.exists() else "does not exist"))
    return path


def _existing_file(value: Any, base_dir: Path, where: str) -> Path:
    path = (base_dir / str(value)).resolve()
    if not path.is_file():
        raise CatalogError(f"{where}: {path} does not exist")
    return path


def _azure(raw: Any, name: str, where: str) -> AzureOffer | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be a mapping")
    instance_type = raw.get("instance_type")
    if not isinstance(instance_type, str) or not instance_type.startswith("Standard_"):
        raise CatalogError(f"{where}.instance_type: {instance_type!r} is not an Azure VM size "
                           "like Standard_NC4as_T4_v3")
    gpus = raw.get("gpus_per_instance")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise CatalogError(f"{where}.gpus_per_instance: must be an integer >= 1 (the surcharge is per GPU-hour)")
    surcharge = raw.get("surcharge_per_gpu_hour")
    if isinstance(surcharge, bool) or not isinstance(surcharge, (int, float)) or surcharge < 0:
        raise CatalogError(f"{where}.surcharge_per_gpu_hour: must be a number >= 0 (USD)")
    count = raw.get("instance_count", 1)
    if not isinstance(count, int) or count < 1:
        raise CatalogError(f"{where}.instance_count: must be an integer >= 1")
    endpoint = raw.get("endpoint_name") or name[:32].rstrip("-")
    if not AZURE_ENDPOINT_PATTERN.fullmatch(endpoint):
        raise CatalogError(f"{where}.endpoint_name: {endpoint!r} must be 3-32 letters, digits or hyphens, "
                           "starting with a letter")
    return AzureOffer(instance_type, gpus, round(float(surcharge), 3), count, endpoint)
