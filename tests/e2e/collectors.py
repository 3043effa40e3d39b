"""Background listeners on the websocket and gRPC alert feeds, for end-to-end tests."""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Any


class WebsocketCollector:
    """Collects every JSON message pushed on a websocket URL, in a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import websockets

        async with websockets.connect(self.url) as ws:
            self.ready.set()
            while not self._stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=0.2)
                except TimeoutError:
                    continue
                self.messages.append(json.loads(raw))

    def start(self) -> WebsocketCollector:
        self._thread.start()
        if not self.ready.wait(10):
            raise TimeoutError(f"websocket {self.url} did not open")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class GrpcAlertCollector:
    """Collects alerts from ``feeder.LogService/WatchAlerts`` with our generated client, in a thread."""

    def __init__(self, target: str) -> None:
        import grpc

        from shared.proto_gen import kubearmor_pb2, kubearmor_pb2_grpc

        self.channel = grpc.insecure_channel(target)
        self.stub = kubearmor_pb2_grpc.LogServiceStub(self.channel)
        self.request = kubearmor_pb2.RequestMessage(Filter="policy")
        self.alerts: list[Any] = []
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import grpc

        try:
            self._stream = self.stub.WatchAlerts(self.request)
            for alert in self._stream:
                self.alerts.append(alert)
        except grpc.RpcError:
            pass

    def start(self) -> GrpcAlertCollector:
        import grpc

        grpc.channel_ready_future(self.channel).result(timeout=10)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self._thread.join(5)
        self.channel.close()
