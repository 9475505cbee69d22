"""A SageMaker emulator for the client libraries' tests: what InvokeEndpoint does, minus auth, and the one
control-plane call a client makes before it invokes (DescribeEndpoint).

POST /endpoints/<name>/invocations: the body, its content type, Accept and CustomAttributes forwarded to the
container's /invocations; the container's answer and content type returned; an error status as SageMaker's
ModelError (424, the container's status and body inside). boto3 reaches it through its own
AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME setting.

POST / with `X-Amz-Target: SageMaker.DescribeEndpoint` (the control plane's JSON 1.1 protocol, reached through
AWS_ENDPOINT_URL_SAGEMAKER): every endpoint name answers InService, as an endpoint fronting this container would;
any other control-plane action is refused as SageMaker refuses an unknown one. jina-sagemaker's
`Client.connect_to_endpoint` describes the endpoint before it sends anything.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class SageMakerRuntime:
    """InvokeEndpoint in front of one container: what the SageMaker runtime does with a request, minus auth."""

    def __init__(self, container_url: str):
        self.container_url = container_url
        self.seen: list[tuple[str, str, bytes]] = []  # (endpoint, content type, body) of every call
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                parts = self.path.strip("/").split("/")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/" and "X-Amz-Target" in self.headers:
                    return self._control_plane(self.headers["X-Amz-Target"], json.loads(body or b"{}"))
                if len(parts) != 3 or parts[0] != "endpoints" or parts[2] != "invocations":
                    return self._send(404, b'{"message": "no such route"}', "application/json")
                content_type = self.headers.get("Content-Type", "application/octet-stream")
                runtime.seen.append((parts[1], content_type, body))
                headers = {"Content-Type": content_type, "Accept": self.headers.get("Accept", "*/*")}
                if "X-Amzn-SageMaker-Custom-Attributes" in self.headers:
                    headers["X-Amzn-SageMaker-Custom-Attributes"] = self.headers["X-Amzn-SageMaker-Custom-Attributes"]
                answer = requests.post(runtime.container_url + "/invocations", data=body, headers=headers, timeout=120)
                if answer.status_code >= 400:  # SageMaker's ModelError: the container's status and body inside
                    error = {"ErrorCode": "CLIENT_ERROR_FROM_MODEL", "OriginalStatusCode": answer.status_code,
                             "OriginalMessage": answer.text, "Message": f"Received client error ({answer.status_code})"}
                    return self._send(424, json.dumps(error).encode(), "application/json",
                                      {"x-amzn-ErrorType": "ModelError:"})
                return self._send(200, answer.content, answer.headers.get("Content-Type", "application/json"),
                                  {"x-Amzn-Invoked-Production-Variant": "AllTraffic"})

            def _control_plane(self, target, request):
                if target != "SageMaker.DescribeEndpoint":
                    error = {"__type": "UnknownOperationException", "message": f"{target} is not emulated"}
                    return self._send(400, json.dumps(error).encode(), "application/x-amz-json-1.1")
                name = request["EndpointName"]
                described = {"EndpointName": name, "EndpointConfigName": name, "EndpointStatus": "InService",
                             "EndpointArn": f"arn:aws:sagemaker:us-east-1:000000000000:endpoint/{name.lower()}",
                             "CreationTime": 0, "LastModifiedTime": 0,
                             "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": 1}]}
                return self._send(200, json.dumps(described).encode(), "application/x-amz-json-1.1")

            def _send(self, status, body, content_type, extra=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()
