"""gcp-storage-emulator's own server, with Cloud Storage's generation preconditions enforced.

The emulator (2026.7.19) accepts every request whatever its `ifGenerationMatch` says, so a store that writes on
generations could lose updates on real Cloud Storage and still pass against it. Cloud Storage's JSON API says
(Request preconditions; Objects: insert, get, delete): `ifGenerationMatch` makes the request depend on the object's
live generation matching the value, `0` meaning "only if no live object exists"; otherwise it fails with 412
Precondition Failed, reason `conditionNotMet`. This wraps the emulator's object handlers with that check, and nothing
else. The emulator serves one request at a time (http.server's HTTPServer), so the check and the write it guards are
one step, as on the service.

Run as `python tests/gcs_emulator.py PORT BUCKET...`: serves on 127.0.0.1:PORT with those buckets, and logs each
request as the emulator does (its status included).
"""

from __future__ import annotations

import logging
import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects

# Cloud Storage's answer to a failed precondition (its JSON API error format)
CONDITION_NOT_MET = {"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
                               "errors": [{"domain": "global", "reason": "conditionNotMet",
                                           "message": "At least one of the pre-conditions you specified did not hold.",
                                           "locationType": "header", "location": "If-Match"}]}}


def _object_name(request) -> str | None:
    """The object a request is about: the path's for get/download/delete, the upload's name for an insert."""
    if request.params and request.params.get("object_id"):
        return request.params["object_id"]
    if request.query.get("name"):
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict) and isinstance(data.get("meta"), dict):
        return data["meta"].get("name")
    return None


def enforcing(handler, creates: bool):
    def checked(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        name = _object_name(request) if wanted else None
        if name is not None:
            try:
                live = int(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except NotFound:
                live = 0
            if int(wanted[0]) != live and (creates or live != 0):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json(CONDITION_NOT_MET)
                return None
            # a read or delete of an object that does not exist: the handler's own 404, as Cloud Storage answers
        return handler(request, response, storage, *args, **kwargs)

    return checked


_GUARDED = (objects.insert, objects.get, objects.download, objects.delete, objects.patch)


def install() -> None:
    """Guard the emulator's object routes (the router reads its table and its insert fallback at each request)."""
    wrapped = {handler: enforcing(handler, handler is objects.insert) for handler in _GUARDED}
    server.HANDLERS = tuple((regex, {method: wrapped.get(handler, handler) for method, handler in routes.items()})
                            for regex, routes in server.HANDLERS)
    objects.insert = wrapped[objects.insert]


def main(port: int, names: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    install()
    running = server.Server("127.0.0.1", port, in_memory=True)
    for name in names:
        buckets.create_bucket(name, running._storage)
    running.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
