/** Prometheus metrics of the sidecar (prom-client), served on --metrics-port. */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'kvtc_requests_total',
    help: 'requests by op and result',
    labelNames: ['op', 'result'],
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'kvtc_errors_total',
    help: 'error replies by code',
    labelNames: ['code'],
    registers: [this.registry],
  });
  readonly bytesIn = new Counter({
    name: 'kvtc_kv_bytes_in_total',
    help: 'raw KV bytes received for saving',
    registers: [this.registry],
  });
  readonly bytesOut = new Counter({
    name: 'kvtc_kv_bytes_out_total',
    help: 'raw KV bytes restored',
    registers: [this.registry],
  });
  readonly recordBytes = new Counter({
    name: 'kvtc_record_bytes_total',
    help: 'compressed record bytes written',
    registers: [this.registry],
  });
  readonly ratio = new Histogram({
    name: 'kvtc_compression_ratio',
    help: 'raw bytes / record bytes per save',
    buckets: [1, 2, 4, 8, 12, 16, 20, 24, 32, 48, 64],
    registers: [this.registry],
  });
  readonly gbps = new Histogram({
    name: 'kvtc_codec_gbps',
    help: 'codec throughput in raw GB/s',
    labelNames: ['direction'],
    buckets: [0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100],
    registers: [this.registry],
  });
  readonly lookups = new Counter({
    name: 'kvtc_lookup_chunks_total',
    help: 'chunk keys looked up, by result',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly inFlight = new Gauge({
    name: 'kvtc_in_flight',
    help: 'requests being worked on',
    registers: [this.registry],
  });
  readonly storeBytes = new Gauge({
    name: 'kvtc_store_bytes',
    help: 'bytes held per store tier',
    labelNames: ['tier'],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  /** Serves /metrics; resolves once listening. Port 0 picks a free port. */
  async serve(port: number, host = '127.0.0.1'): Promise<Server> {
    const server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(body),
        (err: Error) => res.writeHead(500).end(err.message),
      );
    });
    await new Promise<void>((resolve) => server.listen(port, host, resolve));
    return server;
  }
}
