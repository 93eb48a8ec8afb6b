"""Load on ``fmnist-serve``: closed-loop clients on localhost, per backend and batching.

    python benchmarks/speed/serve_load.py --run-dir outputs/runs/<three_conv run> [--requests 400]
        [--time-cap 20] [--rounds 3] [--json out.json]

For each round, each server configuration (backend ``torch`` or ``onnx`` × batching on, with
conf/serve.yaml's ``max_batch_size`` and ``batch_timeout``, or off, ``max_batch_size=1``) is
started as its own process (``start_server``), and clients run at concurrency 1, 8 and 32:
each of C asyncio clients sends one request, waits for its answer, and sends the next, until
``--requests`` requests are answered or ``--time-cap`` seconds have passed. Every request is
one 112×112 RGB PNG (a test image made photo-like: dark on light) as a multipart file field,
encoded once beforehand. The configurations run in turn within a round (A B C D, A B C D,
...), and the tables give the median over rounds of requests/s, of the p50/p95/p99 latency in
milliseconds, and of the CPU milliseconds each request cost the server's HTTP processes, its
inference worker and the clients (``cpu_seconds``).

To say what bounds the server, it also times the parts of one request in this process: HTTP
alone (``GET /health`` at concurrency 32 against a running server, requests/s), decoding an
image (``open_image`` + ``to_fashion_mnist``, ms), and the model's forward pass per image at
batch 1 and 32 for each backend (ms).

Clients and server share the machine's cores, as they would on one host.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import ssl
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from fmnist_lightning.data import load_split
from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR
from fmnist_lightning.data.photos import open_image, to_fashion_mnist
from fmnist_lightning.evaluation.runs import load_trained
from fmnist_lightning.serving.export import EXPORT_FILES, export_run, load_exported
from fmnist_lightning.serving.process import start_server

CONFIGS = [(backend, batching) for backend in ("torch", "onnx") for batching in (True, False)]


BOUNDARY = "fmnist-serve-load"


def multipart(name: str, data: bytes) -> bytes:
    """One file field as a ``multipart/form-data`` body with ``BOUNDARY``, encoded once, so
    that the clients spend their CPU on HTTP rather than on encoding."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
    head += "Content-Type: image/png\r\n\r\n"
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def photo_pngs(count: int = 64) -> list[bytes]:
    """``count`` test images as 112×112 dark-on-light RGB PNG files."""
    images, _ = load_split(DEBIAN_DATASET_DIR, "test")
    out = []
    for image in images[:count]:
        buffer = io.BytesIO()
        photo = Image.fromarray(255 - image.numpy()).resize((112, 112), Image.Resampling.BICUBIC)
        photo.convert("RGB").save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


async def closed_loop(url: str, bodies: list[bytes], concurrency: int, requests: int, cap: float) -> dict:
    """``concurrency`` clients, each sending its next request when the last is answered.

    Each client has an ``httpx.AsyncClient``, and so a keep-alive connection, of its own. They
    are made before the clock starts and share one SSL context: each ``AsyncClient`` otherwise
    loads the CA bundle (about 25 ms of CPU, with the event loop blocked), even for plain HTTP."""
    latencies: list[float] = []
    failures = sent_count = 0
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    tls = ssl.create_default_context()
    clients = [httpx.AsyncClient(base_url=url, timeout=60, verify=tls) for _ in range(concurrency)]
    start = time.perf_counter()
    deadline = start + cap

    async def client_loop(k: int) -> None:
        nonlocal failures, sent_count
        i = k
        async with clients[k] as client:
            while sent_count < requests and time.perf_counter() < deadline:
                sent_count += 1
                sent = time.perf_counter()
                answer = await client.post("/predict", content=bodies[i % len(bodies)], headers=headers)
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    failures += 1
                i += concurrency

    await asyncio.gather(*(client_loop(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        **{f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)},
    }


async def http_only(url: str, concurrency: int = 32, requests: int = 2000) -> float:
    """Requests/s of ``GET /health``: the HTTP stack with no work behind it."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        start = time.perf_counter()
        per_client = requests // concurrency

        async def loop() -> None:
            for _ in range(per_client):
                await client.get("/health")

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return per_client * concurrency / (time.perf_counter() - start)


def part_costs(run_dir: Path, bodies: list[bytes]) -> dict:
    """Milliseconds for decoding one image, and for the forward pass per image."""
    start = time.perf_counter()
    images = torch.cat([to_fashion_mnist(open_image(io.BytesIO(b))) for b in bodies])
    costs = {"decode_ms": (time.perf_counter() - start) * 1000 / len(bodies)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the server's inference worker (serve.yaml's threads)
    models = {"torch": load_trained(run_dir), "onnx": load_exported(run_dir / EXPORT_FILES["onnx"], threads=1)}
    for name, model in models.items():
        for batch in (1, 32):
            x = images[:batch].repeat(max(1, batch // len(images)), 1, 1, 1)[:batch]
            model.predict_proba(x)
            reps = 200 if batch == 1 else 20
            start = time.perf_counter()
            for _ in range(reps):
                model.predict_proba(x)
            costs[f"{name}_batch{batch}_ms_per_image"] = (time.perf_counter() - start) * 1000 / reps / batch
    torch.set_num_threads(threads)
    return costs


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the server's processes, by role: ``worker``, the
    inference worker(s) LitServe spawns; ``http``, the rest (uvicorn, which parses and queues
    the requests, and the process that started it); and ``client``, this process, whose
    asyncio clients send the requests."""
    import psutil

    out = {"worker": 0.0, "http": 0.0, "client": time.process_time()}
    main = psutil.Process(server_pid)
    for process in [main, *main.children(recursive=True)]:
        try:
            times, command = process.cpu_times(), " ".join(process.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
        if "resource_tracker" not in command:
            out["worker" if "multiprocessing.spawn" in command else "http"] += times.user + times.system
    return out


def cpu_description() -> str:
    """The CPU's name, its core count and its SIMD flags, from torch."""
    caps = torch.cpu.get_capabilities()
    flags = " ".join(f for f in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if caps.get(f))
    return f"{caps.get('cpu_name') or platform.processor()}, {os.cpu_count()} cores, {flags}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=400, help="per configuration and concurrency")
    parser.add_argument("--time-cap", type=float, default=20.0, help="seconds per configuration and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    if not (args.run_dir / EXPORT_FILES["onnx"]).exists():
        export_run(args.run_dir, "onnx")
    pngs = photo_pngs()
    bodies = [multipart(f"item_{i}.png", png) for i, png in enumerate(pngs)]
    results: dict[str, list[dict]] = {}
    health_rps = []
    for round_ in range(args.rounds):
        for backend, batching in CONFIGS:
            options = {"backend": backend, **({} if batching else {"max_batch_size": 1})}
            with start_server(args.run_dir, **options) as server:
                asyncio.run(closed_loop(server.url, bodies, 8, 50, 10))  # warm-up
                if round_ == 0 and backend == "torch" and not batching:
                    health_rps.append(asyncio.run(http_only(server.url)))
                for c in args.concurrency:
                    before = cpu_seconds(server.process.pid)
                    r = asyncio.run(closed_loop(server.url, bodies, c, args.requests, args.time_cap))
                    after = cpu_seconds(server.process.pid)
                    r.update({f"{k}_cpu_ms": (after[k] - before[k]) * 1000 / r["requests"] for k in before})
                    results.setdefault(f"{backend} {'on' if batching else 'off'} {c}", []).append(r)
                    print(f"round {round_ + 1} {backend:5} batching {'on ' if batching else 'off'} c={c:2}: "
                          f"{r['rps']:6.1f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  "
                          f"({r['requests']} ok, {r['failures']} failed); CPU ms per request: "
                          f"http {r['http_cpu_ms']:.2f} worker {r['worker_cpu_ms']:.2f} "
                          f"client {r['client_cpu_ms']:.2f}",
                          flush=True)  # fmt: skip
    costs = part_costs(args.run_dir, pngs)

    print(f"\nCPU: {cpu_description()}; {args.rounds} rounds, medians\n")
    print(
        "| backend | batching | concurrency | requests/s | p50 ms | p95 ms | p99 ms "
        "| CPU ms/request: HTTP | worker | client |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    medians = {}
    columns = ("rps", "p50", "p95", "p99", "http_cpu_ms", "worker_cpu_ms", "client_cpu_ms")
    for key, runs in results.items():
        backend, batching, c = key.split()
        m = medians[key] = {k: statistics.median(r[k] for r in runs) for k in columns}
        print(f"| {backend} | {batching} | {c} | {m['rps']:.1f} | " + " | ".join(f"{m[k]:.1f}" for k in columns[1:4])
              + " | " + " | ".join(f"{m[k]:.2f}" for k in columns[4:]) + " |")  # fmt: skip
    print(f"\nHTTP alone (GET /health, concurrency 32): {statistics.median(health_rps):.0f} requests/s")
    print(f"decoding one 112 px PNG (open_image + to_fashion_mnist): {costs['decode_ms']:.2f} ms")
    for name in ("torch", "onnx"):
        print(f"{name} forward per image, 1 thread: batch 1 {costs[f'{name}_batch1_ms_per_image']:.3f} ms, "
              f"batch 32 {costs[f'{name}_batch32_ms_per_image']:.3f} ms")  # fmt: skip
    if args.json:
        payload = {"cpu": cpu_description(), "runs": results, "medians": medians, "health_rps": health_rps, **costs}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
