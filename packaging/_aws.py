"""Offline checks of AWS requests against botocore's bundled service models (the API the cloud publishes).

botocore's own `validate_parameters` checks names, types, required members and minimums; it leaves
enums, patterns and maximums to the server. No server is reachable here, so those are checked too,
from the same shapes.
"""

from __future__ import annotations

import functools
import re
from typing import Any


# The Catalog API's documented entity types carry a version ("MachineLearningProduct@1.0", "Offer@1.0")
# that the model's pattern ^[a-zA-Z]+$ leaves out: the pattern is checked on the name before the "@".
_VERSIONED_SHAPES = {"EntityType"}


# S3's naming rules for general purpose buckets: 3-63 characters, lowercase letters, digits, dots and hyphens,
# a letter or digit at both ends, no ".." and no IP address; some prefixes and suffixes are reserved by S3.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
S3_SCHEME = "s3://"
BUCKET_HINT = "pass a bucket name (my-bucket) or an S3 URL (s3://my-bucket or s3://my-bucket/some/prefix)"


class RequestInvalid(ValueError):
    """A request the cloud would reject; the message lists every problem with its path."""


class BucketInvalid(ValueError):
    """--bucket or --prefix cannot name an S3 location; the message starts with the flag and says what to pass.

    Caught before any request is built: botocore's S3Uri pattern accepts `s3://s3://bucket/...`, so a URL
    given where a name was expected would otherwise pass every offline check and fail on AWS.
    """


def bucket_name_problem(name: str) -> str | None:
    """Why `name` breaks S3's bucket naming rules, or None when it is a valid bucket name."""
    if not 3 <= len(name) <= 63:
        return f"{len(name)} characters, S3 allows 3 to 63"
    if not _BUCKET_NAME.fullmatch(name):
        return ("only lowercase letters, digits, dots and hyphens, with a letter or digit at both ends"
                if name.lower() == name else "S3 bucket names are lowercase")
    if ".." in name:
        return "two dots in a row"
    if _IP_ADDRESS.fullmatch(name):
        return "formatted as an IP address"
    reserved = [p for p in _RESERVED_PREFIXES if name.startswith(p)] + [
        s for s in _RESERVED_SUFFIXES if name.endswith(s)]
    if reserved:
        return f"{reserved[0]!r} is reserved by S3"
    return None


def parse_bucket(value: str) -> tuple[str, str | None]:
    """`my-bucket` or `s3://my-bucket[/some/prefix][/]` -> (bucket, the URL's key prefix or None).

    Raises:
        BucketInvalid: anything else (an https:// or ARN form, uppercase, a path without s3://, ...).
    """
    if value.lower().startswith(S3_SCHEME) and "://" not in value[len(S3_SCHEME):]:
        bucket, _, path = value[len(S3_SCHEME):].partition("/")
        prefix = path.strip("/") or None
    elif "://" in value or value.startswith("arn:"):
        raise BucketInvalid(f"--bucket: {value!r} is not an S3 bucket or s3:// URL; {BUCKET_HINT}")
    elif "/" in value:
        raise BucketInvalid(f"--bucket: {value!r} holds a '/' (bucket names never do); {BUCKET_HINT}, "
                            "or give the key prefix with --prefix")
    else:
        bucket, prefix = value, None
    problem = bucket_name_problem(bucket)
    if problem:
        shown = repr(bucket) if bucket == value else f"{bucket!r} (in {value!r})"
        raise BucketInvalid(f"--bucket: {shown} is not a valid S3 bucket name ({problem}); {BUCKET_HINT}")
    return bucket, prefix


def s3_location(bucket: str, prefix: str | None, default_prefix: str) -> tuple[str, str]:
    """(bucket, key prefix) from --bucket and --prefix: one place for every script that takes a bucket.

    The prefix comes from the s3:// URL, else from --prefix ('' for the bucket root), else `default_prefix`;
    a URL with a prefix and a --prefix at once is refused rather than one silently winning.

    Raises:
        BucketInvalid: naming the flag to fix.
    """
    name, url_prefix = parse_bucket(bucket)
    if prefix is not None and "://" in prefix:
        raise BucketInvalid(f"--prefix: {prefix!r} is a URL; give a key prefix (some/prefix), or put the whole "
                            "location in --bucket s3://my-bucket/some/prefix")
    if url_prefix is not None and prefix is not None:
        raise BucketInvalid(f"--prefix: {prefix!r} and the prefix {url_prefix!r} in --bucket {bucket} both name "
                            "the key prefix; give it once, in the s3:// URL or with --prefix")
    if url_prefix is not None:
        return name, url_prefix
    return name, (prefix if prefix is not None else default_prefix).strip("/")


@functools.lru_cache(maxsize=None)
def service_model(service: str):
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def operation_model(service: str, operation: str):
    return service_model(service).operation_model(operation)


def field_problems(service: str, shape_name: str, value: str) -> list[str]:
    """What is wrong with `value` as the string shape `shape_name` of `service` (length, pattern); [] when valid.

    For a single value taken from the command line (an ARN) that ends up inside a document member the
    request validation cannot see into.
    """
    shape = service_model(service).shape_for(shape_name)
    problems: list[str] = []
    if len(value) < shape.metadata.get("min", 0):
        problems.append(f"{shape_name}: {len(value)} characters, at least {shape.metadata['min']} needed")
    _check_constraints(value, shape, shape_name, problems)
    return problems


def validate_request(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise RequestInvalid unless `params` is a valid `operation` request of `service`."""
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    shape = operation_model(service, operation).input_shape
    try:
        validate_parameters(params, shape)
    except ParamValidationError as exc:
        raise RequestInvalid(f"{service} {operation}: {exc.kwargs.get('report', exc)}") from exc
    problems: list[str] = []
    _check_constraints(params, shape, operation, problems)
    if problems:
        raise RequestInvalid(f"{service} {operation}:\n" + "\n".join(problems))


def _check_constraints(value: Any, shape, path: str, problems: list[str]) -> None:
    metadata = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if metadata.get("document"):
            return
        for name, member in shape.members.items():
            if name in value:
                _check_constraints(value[name], member, f"{path}.{name}", problems)
    elif kind == "list":
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append(f"{path}: {len(value)} items, at most {metadata['max']} allowed")
        for i, item in enumerate(value):
            _check_constraints(item, shape.member, f"{path}[{i}]", problems)
    elif kind == "map":
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append(f"{path}: {len(value)} entries, at most {metadata['max']} allowed")
        for key, item in value.items():
            _check_constraints(key, shape.key, f"{path} key {key!r}", problems)
            _check_constraints(item, shape.value, f"{path}.{key}", problems)
    elif kind == "string":
        if shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of {', '.join(shape.enum[:8])}"
                            + (", ..." if len(shape.enum) > 8 else ""))
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append(f"{path}: {len(value)} characters, at most {metadata['max']} allowed")
        pattern = _pattern(metadata.get("pattern"))
        checked = value.split("@", 1)[0] if shape.name in _VERSIONED_SHAPES else value
        if pattern is not None and not pattern.fullmatch(checked):
            problems.append(f"{path}: {value!r} does not match {metadata['pattern']}")
    elif kind in ("integer", "long", "double", "float"):
        if "max" in metadata and value > metadata["max"]:
            problems.append(f"{path}: {value} is above the maximum {metadata['max']}")


@functools.lru_cache(maxsize=None)
def _pattern(source: str | None):
    if not source:
        return None
    try:
        return re.compile(source, re.DOTALL)
    except re.error:
        return None  # a Java-only construct (\p{...}); the service checks it
