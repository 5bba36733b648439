"""A real OTLP trace receiver for benchmarks: opentelemetry-proto's TraceService over gRPC on
the port given, counting spans; prints the count and its own CPU seconds on SIGTERM.
    python bench/otlp_receiver.py PORT"""

import resource
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Counter(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


counter = Counter()
server = grpc.server(futures.ThreadPoolExecutor(2))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait()
server.stop(0)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(f"{counter.spans} spans, {usage.ru_utime + usage.ru_stime:.1f} CPU s", flush=True)
