"""A real OTLP/HTTP trace receiver on loopback, for proxy/tests/otel_traces.rs.

Decodes each POST /v1/traces (protobuf, as the OpenTelemetry SDKs send it)
with the `opentelemetry-proto` package and prints one JSON object per span
on stdout; prints `PORT n` first. Argument: a marker string; every payload
is searched for it as raw bytes, and a hit is printed as {"marker_found": true}.
With a second argument `refuse-first`, the first POST is answered 503 (as a
collector that is starting) and printed as {"refused": 1, "span_ids": [...]}.
Stops by itself after 60 s, or when stdin closes (the test went away).
"""

import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

MARKER = sys.argv[1].encode() if len(sys.argv) > 1 else None
REFUSE_FIRST = len(sys.argv) > 2 and sys.argv[2] == "refuse-first"
out_lock = threading.Lock()
posts = 0


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def value(v: common_pb2.AnyValue):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind is None:
        return None
    return getattr(v, kind)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global posts
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with out_lock:
            posts += 1
            post = posts
        if REFUSE_FIRST and post == 1:
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(gzip.decompress(body) if self.headers.get("content-encoding") == "gzip" else body)
            ids = [s.span_id.hex() for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
            emit({"refused": post, "span_ids": ids})
            self.send_response(503)
            self.send_header("retry-after", "0")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        if MARKER and MARKER in body:
            emit({"marker_found": True})
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    emit({
                        "name": s.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "kind": s.kind,
                        "status": s.status.code,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                        "resource": resource,
                        "content_type": self.headers.get("content-type"),
                        "content_encoding": self.headers.get("content-encoding"),
                        "authorization": self.headers.get("authorization"),
                        "post": post,
                    })
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    emit_port = f"PORT {server.server_address[1]}"
    with out_lock:
        sys.stdout.write(emit_port + "\n")
        sys.stdout.flush()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    done = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait(60)
    server.shutdown()


main()
