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
        pricing: {model: per_inference, unit: tokens, tokens_per_unit: 1000, price_per_unit: 0.00002}
                                           # optional; default {model: hourly}; unit request|input|tokens
        prices_per_hour:                   # USD per instance-hour, every instance type above
          realtime: {ml.m5.xlarge: 0.10, ml.g5.xlarge: 0.50}   # optional with per_inference (then 0)
          batch: {ml.m5.xlarge: 0.10}      # always: AWS bills batch transform per hour
        free_trial_days: 30                # 0, or 5..31
        regions: [us-east-1, eu-west-1]
        description: docs/description.md
        eula: docs/eula.md
        remote_code: {other-org/repo: path/to/checkout}   # optional: where trust_remote_code files live
        classifiers: {support: support-examples.jsonl}   # optional: few-shot classifiers fitted into the artifact
        classifier_min_accuracy: 0.8       # optional: a classifier below this held-out accuracy refuses the build
        azure:
          instance_type: Standard_NC4as_T4_v3
          gpus_per_instance: 1             # cores_per_instance too, when the plan is priced per core-hour
          plan: {id: minilm-gpu, name: "Per GPU-hour", unit: gpu_hour, price_per_unit: 0.40,
                 free_trial_months: 1, markets: [US, DE]}
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from model_handlers import kinds
from model_handlers.errors import ModelDirectoryError
from model_handlers.metering import UNITS, Metering, parse_metering

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
HOURLY = "hourly"
PER_INFERENCE = "per_inference"
# AWS Marketplace states offer prices with 8 decimals (the Discovery API's offer terms: "0.00002000"); a catalog
# price finer than that would be rounded by AWS, so it is refused rather than silently changed.
PRICE_DECIMALS = 8
# Partner Center's rule for a plan ID: lowercase letters, digits, dashes or underscores, at most 50; fixed once
# the plan is created.
AZURE_PLAN_ID_PATTERN = re.compile(r"[a-z0-9_-]{1,50}")
# What an Azure Marketplace plan's software surcharge is counted in, and the words buyers see.
AZURE_PLAN_UNITS = {"gpu_hour": "GPU-hour", "core_hour": "core-hour"}
# Partner Center's free-trial lengths for offers billed per hour of compute: none, 1, 3 or 6 months.
AZURE_TRIAL_MONTHS = (0, 1, 3, 6)
# Partner Center markets are countries and regions, named by ISO 3166-1 alpha-2 codes (US, DE, GB, ...).
AZURE_MARKET_PATTERN = re.compile(r"[A-Z]{2}")


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
class Pricing:
    """How AWS bills the software: per instance-hour (hourly), or real-time per unit the container reports.

    With per_inference, batch transform (and asynchronous inference) is still billed per instance-hour: AWS
    bills those hourly whatever the container reports.
    """

    model: str = HOURLY
    unit: str | None = None  # per_inference: one of model_handlers.metering.UNITS
    tokens_per_unit: int = 1
    price_per_unit: float = 0.0  # USD per unit

    @property
    def per_inference(self) -> bool:
        return self.model == PER_INFERENCE

    @property
    def metering(self) -> Metering | None:
        """What one unit is, as the server counts it; None when hourly (the container then reports nothing)."""
        return Metering(self.unit, self.tokens_per_unit) if self.per_inference else None

    def serving_config(self) -> dict[str, Any] | None:
        """searchbox.json's `metering` value; None when hourly (the key is left out)."""
        if not self.per_inference:
            return None
        return {"unit": self.unit, **({"tokens_per_unit": self.tokens_per_unit} if self.unit == "tokens" else {})}


@dataclass(frozen=True)
class AzurePlan:
    """An Azure Marketplace plan: the software surcharge Azure bills per GPU-hour or core-hour on top of the VM."""

    id: str
    name: str
    unit: str  # a key of AZURE_PLAN_UNITS
    price_per_unit: float  # USD
    free_trial_months: int = 0
    markets: tuple[str, ...] = ()

    @property
    def unit_words(self) -> str:
        return AZURE_PLAN_UNITS[self.unit]


@dataclass(frozen=True)
class AzureOffer:
    instance_type: str
    plan: AzurePlan
    gpus_per_instance: int = 0
    cores_per_instance: int = 0
    instance_count: int = 1
    endpoint_name: str = ""

    @property
    def units_per_instance(self) -> int:
        """GPUs or cores of one instance: what the plan's price is multiplied by, per instance-hour."""
        return self.gpus_per_instance if self.plan.unit == "gpu_hour" else self.cores_per_instance

    @property
    def surcharge_per_instance_hour(self) -> float:
        return round(self.plan.price_per_unit * self.units_per_instance, PRICE_DECIMALS)


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
    pricing: Pricing = Pricing()
    # the compute path the artifact serves on, and int8 (onnx only): build_artifact exports and checks them
    backend: str = "torch"
    quantize: str | None = None
    # few-shot classifiers build_artifact fits and ships (name -> examples.jsonl), and the accuracy each must reach
    classifiers: Mapping[str, Path] = field(default_factory=dict)
    classifier_min_accuracy: float = 0.0

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


def usd(value: float) -> str:
    """A catalog price for people: exact to AWS's 8 decimals, no trailing zeros beyond the cents ($0.00002, $0.40)."""
    text = f"{round(value, PRICE_DECIMALS):.{PRICE_DECIMALS}f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


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
    known = {"name", "title", "model_dir", "served_name", "kind", "tasks", "instance_types", "pricing",
             "prices_per_hour", "free_trial_days", "regions", "description", "eula", "remote_code", "azure",
             "backend", "quantize", "classifiers", "classifier_min_accuracy"}
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
    pricing = _pricing(entry.get("pricing"), f"{where}.pricing")
    prices = _prices(_required(entry, "prices_per_hour", where), instance_types, f"{where}.prices_per_hour",
                     realtime_optional=pricing.per_inference)
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
    backend = entry.get("backend", "torch")
    if backend not in ("torch", "onnx"):
        raise CatalogError(f"{where}.backend: {backend!r} is not one of torch, onnx")
    quantize = entry.get("quantize")
    if quantize not in (None, "int8") or (quantize and backend != "onnx"):
        raise CatalogError(f"{where}.quantize: {quantize!r} must be int8 (with backend: onnx) or left out")
    remote_code = entry.get("remote_code") or {}
    if not isinstance(remote_code, dict):
        raise CatalogError(f"{where}.remote_code: must map repository ids to local directories")
    classifiers = entry.get("classifiers") or {}
    if not isinstance(classifiers, dict):
        raise CatalogError(f"{where}.classifiers: must map classifier names to examples.jsonl files")
    floor = entry.get("classifier_min_accuracy", 0.0)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
        raise CatalogError(f"{where}.classifier_min_accuracy: {floor!r} must be a number from 0 to 1")
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
        pricing=pricing,
        backend=backend,
        quantize=quantize,
        classifiers={str(name): _existing_file(path, base_dir, f"{where}.classifiers.{name}")
                     for name, path in classifiers.items()},
        classifier_min_accuracy=float(floor),
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


def _prices(raw: Any, types: Mapping[str, tuple[str, ...]], where: str, *,
            realtime_optional: bool = False) -> dict[str, dict[str, float]]:
    """{mode: {instance type: USD per hour}} for every listed instance type.

    With per-inference pricing the real-time table may be left out: every real-time type then costs 0 per hour
    (real-time endpoints are billed per unit; the hourly price is what AWS bills where it bills those instance
    types per hour, asynchronous inference endpoints).
    """
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must hold 'realtime' and 'batch' price maps")
    prices: dict[str, dict[str, float]] = {}
    for mode in MODES:
        table = raw.get(mode)
        if table is None and mode == "realtime" and realtime_optional:
            prices[mode] = dict.fromkeys(types[mode], 0.0)
            continue
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


def _pricing(raw: Any, where: str) -> Pricing:
    """The `pricing` block: absent or {model: hourly}; or {model: per_inference, unit, tokens_per_unit, price_per_unit}.

    Raises:
        CatalogError: naming the field to fix.
    """
    if raw is None:
        return Pricing()
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be a mapping, {{model: {HOURLY}}} or {{model: {PER_INFERENCE}, unit: "
                           f"{'|'.join(UNITS)}, price_per_unit: USD}}")
    known = {"model", "unit", "tokens_per_unit", "price_per_unit"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CatalogError(f"{where}.{unknown[0]}: unknown field; known fields are {', '.join(sorted(known))}")
    model = raw.get("model", HOURLY)
    if model not in (HOURLY, PER_INFERENCE):
        raise CatalogError(f"{where}.model: {model!r} is not {HOURLY} or {PER_INFERENCE}")
    if model == HOURLY:
        extra = sorted(set(raw) - {"model"})
        if extra:
            raise CatalogError(f"{where}.{extra[0]}: only with model {PER_INFERENCE}; hourly prices are in "
                               "prices_per_hour")
        return Pricing()
    unit = raw.get("unit")
    if unit is None:
        raise CatalogError(f"{where}.unit: missing; one of {', '.join(UNITS)} (what one billed unit is)")
    if unit not in UNITS:
        raise CatalogError(f"{where}.unit: {unit!r} is not one of {', '.join(UNITS)}")
    per = raw.get("tokens_per_unit")
    if unit == "tokens":
        if per is None:
            raise CatalogError(f"{where}.tokens_per_unit: missing; how many tokens of usage one unit is, e.g. 1000")
        if isinstance(per, bool) or not isinstance(per, int) or per < 1:
            raise CatalogError(f"{where}.tokens_per_unit: must be a whole number of tokens >= 1, not {per!r}")
    elif per is not None:
        raise CatalogError(f"{where}.tokens_per_unit: only with unit tokens, not with unit {unit}")
    price = raw.get("price_per_unit")
    if price is None:
        raise CatalogError(f"{where}.price_per_unit: missing; USD per unit, e.g. 0.00002")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not price > 0:
        raise CatalogError(f"{where}.price_per_unit: must be a number of USD > 0, not {price!r} "
                           f"(a free product is {{model: {HOURLY}}} with prices 0)")
    if round(price, PRICE_DECIMALS) != price:
        raise CatalogError(f"{where}.price_per_unit: {price!r} has more than {PRICE_DECIMALS} decimals, "
                           "which AWS Marketplace does not state")
    pricing = Pricing(PER_INFERENCE, unit, per or 1, float(price))
    try:  # the server's own reading of searchbox.json: what the artifact will carry must serve
        parse_metering(pricing.serving_config(), where)
    except ModelDirectoryError as exc:  # pragma: no cover - the checks above are stricter; this is a bug
        raise CatalogError(str(exc)) from exc
    return pricing


def _model_dir(value: Any, base_dir: Path, where: str) -> Path:
    if value == EMBEDDED:
        from model_handlers.embedded import EmbeddedModelMissing, embedded_model_dir

        try:
            return embedded_model_dir()
        except EmbeddedModelMissing as exc:
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
    known = {"instance_type", "gpus_per_instance", "cores_per_instance", "instance_count", "endpoint_name", "plan"}
    if "surcharge_per_gpu_hour" in raw:
        raise CatalogError(f"{where}.surcharge_per_gpu_hour: moved into the plan: "
                           "plan: {unit: gpu_hour, price_per_unit: ...} (see catalog.example.yaml)")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CatalogError(f"{where}.{unknown[0]}: unknown field; known fields are {', '.join(sorted(known))}")
    instance_type = raw.get("instance_type")
    if not isinstance(instance_type, str) or not instance_type.startswith("Standard_"):
        raise CatalogError(f"{where}.instance_type: {instance_type!r} is not an Azure VM size "
                           "like Standard_NC4as_T4_v3")
    plan = _azure_plan(raw.get("plan"), f"{where}.plan")
    counts = {}
    for key, needed in (("gpus_per_instance", "gpu_hour"), ("cores_per_instance", "core_hour")):
        value = raw.get(key)
        if value is None and plan.unit == needed:
            raise CatalogError(f"{where}.{key}: missing; the plan is priced per {plan.unit_words}, so the "
                               f"price per instance-hour is price_per_unit x {key}")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise CatalogError(f"{where}.{key}: must be an integer >= 1, not {value!r}")
        counts[key] = value or 0
    count = raw.get("instance_count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise CatalogError(f"{where}.instance_count: must be an integer >= 1")
    endpoint = raw.get("endpoint_name") or name[:32].rstrip("-")
    if not AZURE_ENDPOINT_PATTERN.fullmatch(endpoint):
        raise CatalogError(f"{where}.endpoint_name: {endpoint!r} must be 3-32 letters, digits or hyphens, "
                           "starting with a letter")
    return AzureOffer(instance_type, plan, counts["gpus_per_instance"], counts["cores_per_instance"], count, endpoint)


def _azure_plan(raw: Any, where: str) -> AzurePlan:
    """The Azure Marketplace plan a vendor creates in Partner Center: id, name, what and how much it charges."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: missing; {{id, name, unit: {' or '.join(AZURE_PLAN_UNITS)}, price_per_unit, "
                           "free_trial_months, markets}")
    known = {"id", "name", "unit", "price_per_unit", "free_trial_months", "markets"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CatalogError(f"{where}.{unknown[0]}: unknown field; known fields are {', '.join(sorted(known))}")
    plan_id = raw.get("id")
    if not isinstance(plan_id, str) or not AZURE_PLAN_ID_PATTERN.fullmatch(plan_id):
        raise CatalogError(f"{where}.id: {plan_id!r} must be 1-50 lowercase letters, digits, dashes or underscores "
                           "(Partner Center's plan ID; it cannot be changed once the plan is created)")
    plan_name = raw.get("name")
    if not isinstance(plan_name, str) or not plan_name.strip() or "\n" in plan_name:
        raise CatalogError(f"{where}.name: must be one line of text, the plan name buyers choose by")
    unit = raw.get("unit")
    if unit not in AZURE_PLAN_UNITS:
        raise CatalogError(f"{where}.unit: {unit!r} is not one of {', '.join(AZURE_PLAN_UNITS)}")
    price = raw.get("price_per_unit")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
        raise CatalogError(f"{where}.price_per_unit: must be a number of USD >= 0 per {AZURE_PLAN_UNITS[unit]}, "
                           f"not {price!r}")
    if round(price, PRICE_DECIMALS) != price:
        raise CatalogError(f"{where}.price_per_unit: {price!r} has more than {PRICE_DECIMALS} decimals")
    trial = raw.get("free_trial_months", 0)
    if trial not in AZURE_TRIAL_MONTHS or isinstance(trial, bool):
        raise CatalogError(f"{where}.free_trial_months: {trial!r} is not one of "
                           f"{', '.join(map(str, AZURE_TRIAL_MONTHS))} (0: no trial)")
    markets = raw.get("markets")
    if not isinstance(markets, list) or not markets:
        raise CatalogError(f"{where}.markets: must be a non-empty list of markets, ISO 3166 country codes like US")
    for i, market in enumerate(markets):
        if not isinstance(market, str) or not AZURE_MARKET_PATTERN.fullmatch(market):
            raise CatalogError(f"{where}.markets[{i}]: {market!r} is not a two-letter country code like US or DE")
    if len(set(markets)) != len(markets):
        raise CatalogError(f"{where}.markets: lists a market twice")
    return AzurePlan(plan_id, plan_name.strip(), unit, float(price), trial, tuple(markets))
